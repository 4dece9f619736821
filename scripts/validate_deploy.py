#!/usr/bin/env python3
"""Checks of deploy/ that schemas cannot make: the manifests, units and scripts against each
other and against the code. Run by scripts/validate-deploy (which validates the schemas and
the unit syntax first); prints one FAIL line per problem and exits 1 if there is any.

Usage: scripts/validate_deploy.py [--bin PATH] [--root DIR]
  --bin   the tollgate binary whose --help lists the real flags and defaults (checks that
          need it are skipped, and say so, when it does not exist)
  --root  the repository (default: this script's parent folder)
"""

import argparse
import glob
import os
import re
import subprocess
import sys

import yaml

problems = []
notes = []


def fail(where, msg):
    problems.append(f"{where}: {msg}")


# -- the code's defaults and flags ----------------------------------------------------------

DEFAULT_FLAGS = {
    # subcommand, flag -> what DESIGN.md §2 and README "The CLI" give as the default address
    ("control-plane", "grpc"): None,
    ("control-plane", "http"): None,
    ("edge", "listen"): None,
    ("edge", "admin"): None,
    ("edge", "peer"): None,
}


def readme_defaults(root):
    """The default addresses README.md states ("Default addresses (each a flag of the same
    name): control plane `--grpc 127.0.0.1:7700` ...")."""
    text = open(os.path.join(root, "README.md"), encoding="utf-8").read()
    m = re.search(r"Default addresses.*?(?=\n\n)", text, re.S)
    if not m:
        fail("README.md", 'no "Default addresses" paragraph to take the default ports from')
        return {}
    para = m.group(0)
    out = {}
    for sub, flag in DEFAULT_FLAGS:
        fm = re.search(rf"`--{flag} ([0-9.]+):(\d+)`", para)
        if not fm:
            fail("README.md", f"Default addresses: no `--{flag} HOST:PORT`")
            continue
        out[(sub, flag)] = (fm.group(1), int(fm.group(2)))
    return out


class Cli:
    """What `tollgate ... --help` says: subcommands, flags, defaults."""

    def __init__(self, binary):
        self.binary = binary
        self.cache = {}

    def help(self, path):
        key = tuple(path)
        if key not in self.cache:
            out = subprocess.run(
                [self.binary, *path, "--help"], capture_output=True, text=True, timeout=10
            )
            if out.returncode != 0:
                raise RuntimeError(f"{' '.join(['tollgate', *path])} --help: {out.stderr.strip()}")
            self.cache[key] = out.stdout
        return self.cache[key]

    def subcommands(self, path):
        text = self.help(path)
        m = re.search(r"^Commands:\n(.*?)(?:\n\n|\Z)", text, re.S | re.M)
        if not m:
            return set()
        return {line.split()[0] for line in m.group(1).splitlines() if line.strip()} - {"help"}

    def flags(self, path):
        return set(re.findall(r"^\s+(?:-\w, )?--([a-z0-9][a-z0-9-]*)", self.help(path), re.M))

    def default(self, path, flag):
        text = self.help(path)
        m = re.search(rf"^\s+--{flag} <[A-Z_]+>\n?(.*?)(?=^\s+-|\Z)", text, re.S | re.M)
        if not m:
            return None
        d = re.search(r"\[default: ([^\]]+)\]", m.group(1))
        return d.group(1) if d else None

    def resolve(self, words):
        """The subcommand path a command line names: ['cluster', 'add-node'], ['edge']."""
        path = []
        for w in words:
            subs = self.subcommands(path)
            if w in subs:
                path.append(w)
            else:
                break
        return path


def logical_lines(text):
    """Lines with backslash continuations joined (shell, unit files)."""
    out, cur, start, n = [], "", 1, 0
    for n, line in enumerate(text.splitlines(), 1):
        if not cur:
            start = n
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        out.append((start, cur + line))
        cur = ""
    if cur:
        out.append((start, cur))
    return out


COMMAND_END = re.compile(r"\s(?:\||;|&&|\|\||#)\s|`|$")


def check_flags_in(path, text, cli):
    """Every `tollgate SUB ... --flag` written in `text` uses a flag SUB really has."""
    for lineno, line in logical_lines(text):
        for m in re.finditer(r"(?<![\w/.-])(?:/usr/local/bin/)?tollgate\s+([a-z][a-z-]*(?:\s+[a-z][a-z-]*)?)", line):
            rest = line[m.start(1):]
            end = COMMAND_END.search(rest)
            cmd = rest[: end.start()] if end else rest
            words = cmd.split()
            sub = cli.resolve(words[:2])
            if not sub:
                continue
            known = cli.flags(sub)
            for flag in re.findall(r"(?<![\w-])--([a-z][a-z0-9-]*)", cmd):
                if flag not in known:
                    fail(f"{path}:{lineno}", f"`tollgate {' '.join(sub)}` has no flag --{flag}")


# -- Kubernetes ---------------------------------------------------------------------------

def load_manifests(root):
    objs = []
    for f in sorted(glob.glob(os.path.join(root, "deploy/kubernetes/*.yaml"))):
        with open(f, encoding="utf-8") as fh:
            for doc in yaml.safe_load_all(fh):
                if doc is None:
                    continue
                objs.append((os.path.relpath(f, root), doc))
    return objs


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container_ports(pod_spec):
    ports = {}
    for c in pod_spec.get("containers", []):
        for p in c.get("ports", []):
            if "name" in p:
                ports[p["name"]] = p["containerPort"]
    return ports


def script_of(container):
    """The shell script a container runs (`command: [/bin/sh, -c, SCRIPT]`), or ''."""
    cmd = container.get("command") or []
    if len(cmd) >= 3 and cmd[0] in ("/bin/sh", "sh") and cmd[1] == "-c":
        return cmd[2]
    return ""


def flag_value(script, flag):
    m = re.search(rf"--{flag}\s+(\"[^\"]*\"|\S+)", script)
    return m.group(1).strip('"') if m else None


def check_kubernetes(root, defaults, cli, dockerfile_uid):
    objs = load_manifests(root)
    by_kind = {}
    for f, o in objs:
        by_kind.setdefault(o.get("kind"), []).append((f, o))

    namespaces = [o["metadata"]["name"] for _, o in by_kind.get("Namespace", [])]
    if len(namespaces) != 1:
        fail("deploy/kubernetes", f"expected one Namespace, found {namespaces}")
    ns = namespaces[0] if namespaces else None
    for f, o in objs:
        if o.get("kind") == "Namespace":
            continue
        if o["metadata"].get("namespace") != ns:
            fail(f, f"{o['kind']}/{o['metadata']['name']} is not in namespace {ns}")

    # Secrets are made by the operator (deploy/README.md), never shipped with a value.
    for f, o in by_kind.get("Secret", []):
        fail(f, f"Secret/{o['metadata']['name']} is in the manifests: secrets are created by hand, never committed")

    workloads = by_kind.get("StatefulSet", []) + by_kind.get("Deployment", [])
    pods = []  # (file, workload, pod labels, pod spec)
    for f, w in workloads:
        tmpl = w["spec"]["template"]
        labels = tmpl["metadata"].get("labels", {})
        sel = w["spec"]["selector"].get("matchLabels", {})
        if not selects(sel, labels):
            fail(f, f"{w['kind']}/{w['metadata']['name']}: selector {sel} does not match its pod labels {labels}")
        pods.append((f, w, labels, tmpl["spec"]))

    # The control plane: three voters, a headless service, a PDB keeping the quorum.
    sts = [(f, o) for f, o in by_kind.get("StatefulSet", []) if o["metadata"]["name"] == "tollgate-cp"]
    if not sts:
        fail("deploy/kubernetes", "no StatefulSet tollgate-cp (the control plane)")
        return
    f, cp = sts[0]
    cp_labels = cp["spec"]["template"]["metadata"]["labels"]
    cp_spec = cp["spec"]["template"]["spec"]
    replicas = cp["spec"].get("replicas")
    if replicas != 3:
        fail(f, f"StatefulSet tollgate-cp has replicas {replicas}, want 3 (three Raft voters)")
    svc_name = cp["spec"].get("serviceName")
    headless = [o for _, o in by_kind.get("Service", []) if o["metadata"]["name"] == svc_name]
    if not headless:
        fail(f, f"StatefulSet tollgate-cp: serviceName {svc_name!r} names no Service")
    else:
        h = headless[0]["spec"]
        if h.get("clusterIP") != "None":
            fail(f, f"Service {svc_name} (the StatefulSet's serviceName) is not headless (clusterIP: None)")
        if not h.get("publishNotReadyAddresses"):
            fail(f, f"Service {svc_name}: publishNotReadyAddresses must be true (peers must resolve each other before they are ready)")
        if not selects(h.get("selector", {}), cp_labels):
            fail(f, f"Service {svc_name} does not select the control-plane pods")

    cp_pdbs = [
        (pf, p) for pf, p in by_kind.get("PodDisruptionBudget", [])
        if selects(p["spec"].get("selector", {}).get("matchLabels", {}), cp_labels)
    ]
    if not cp_pdbs:
        fail("deploy/kubernetes", "no PodDisruptionBudget selects the control-plane pods")
    for pf, p in cp_pdbs:
        if p["spec"].get("maxUnavailable") != 1 or "minAvailable" in p["spec"]:
            fail(pf, f"PodDisruptionBudget/{p['metadata']['name']}: want maxUnavailable: 1 (two of three voters keep the quorum)")

    # The edges: a Deployment, ready on /readyz.
    deps = [(f, o) for f, o in by_kind.get("Deployment", []) if o["metadata"]["name"] == "tollgate-edge"]
    if not deps:
        fail("deploy/kubernetes", "no Deployment tollgate-edge")
        return
    ef, edge = deps[0]
    edge_labels = edge["spec"]["template"]["metadata"]["labels"]
    edge_spec = edge["spec"]["template"]["spec"]
    if selects(edge["spec"]["selector"]["matchLabels"], cp_labels) or selects(cp["spec"]["selector"]["matchLabels"], edge_labels):
        fail(ef, "the edge and control-plane selectors overlap")

    def probe(f, spec, cname, kind, path, portname):
        c = next((c for c in spec["containers"] if c["name"] == cname), None)
        if c is None:
            fail(f, f"no container {cname}")
            return
        p = (c.get(kind) or {}).get("httpGet")
        if not p:
            fail(f, f"container {cname}: no {kind} with httpGet")
            return
        if p.get("path") != path:
            fail(f, f"container {cname}: {kind} path is {p.get('path')!r}, want {path!r}")
        if p.get("port") != portname:
            fail(f, f"container {cname}: {kind} port is {p.get('port')!r}, want the {portname!r} port")

    probe(ef, edge_spec, "edge", "readinessProbe", "/readyz", "admin")
    probe(ef, edge_spec, "edge", "livenessProbe", "/healthz", "admin")
    probe(f, cp_spec, "control-plane", "readinessProbe", "/readyz", "http")
    probe(f, cp_spec, "control-plane", "livenessProbe", "/healthz", "http")

    # Ports: container ports carry the code's default port numbers, and the flags bind them.
    want = {
        "control-plane": {"grpc": ("control-plane", "grpc"), "http": ("control-plane", "http")},
        "edge": {"proxy": ("edge", "listen"), "admin": ("edge", "admin"), "peer": ("edge", "peer")},
    }
    for wf, spec, cname in ((f, cp_spec, "control-plane"), (ef, edge_spec, "edge")):
        c = next((c for c in spec["containers"] if c["name"] == cname), None)
        if c is None:
            continue
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        script = script_of(c)
        if not re.search(rf"\btollgate {cname}\b", script):
            fail(wf, f"container {cname} does not run `tollgate {cname}` from a /bin/sh -c script")
        for pname, key in want[cname].items():
            default = defaults.get(key)
            if pname not in ports:
                fail(wf, f"container {cname}: no port named {pname}")
                continue
            if default and ports[pname] != default[1]:
                fail(wf, f"container {cname}: port {pname} is {ports[pname]}, the default of --{key[1]} is {default[1]} (README, DESIGN.md)")
            bound = flag_value(script, key[1])
            if bound is None or not bound.endswith(f":{ports[pname]}"):
                fail(wf, f"container {cname}: --{key[1]} {bound} does not bind port {pname} ({ports[pname]})")
        if cname == "edge" and "proxy-tls" in ports:
            bound = flag_value(script, "tls-listen")
            if bound is None or not bound.endswith(f":{ports['proxy-tls']}"):
                fail(wf, f"container edge: --tls-listen {bound} does not bind port proxy-tls ({ports['proxy-tls']})")

    # Wiring between the objects.
    cp_script = script_of(cp_spec["containers"][0])
    adv = flag_value(cp_script, "advertise") or ""
    if f".{svc_name}." not in adv or not adv.endswith(f":{container_ports(cp_spec).get('grpc')}"):
        fail(f, f"--advertise {adv!r} is not <pod>.{svc_name}.<namespace>.svc:<grpc port>")
    if "--master-key-file" not in cp_script:
        fail(f, "the control plane is not given --master-key-file (the Secret)")
    edge_script = script_of(edge_spec["containers"][0])
    ordinals = {int(n) for n in re.findall(r"tollgate-cp-(\d+)\.", edge_script)}
    if replicas and ordinals != set(range(replicas)):
        fail(ef, f"--control-plane names tollgate-cp-{sorted(ordinals)}, the StatefulSet has {replicas} pods")
    if f".{svc_name}." not in edge_script and f"{svc_name}." not in edge_script:
        fail(ef, f"--control-plane does not use the headless service {svc_name}")

    boot = open(os.path.join(root, "deploy/kubernetes/bootstrap.sh"), encoding="utf-8").read()
    if f"tollgate-cp-${{ordinal}}.{svc_name}." not in boot:
        fail("deploy/kubernetes/bootstrap.sh", f"add-node addresses are not tollgate-cp-N.{svc_name}.<namespace>.svc")
    if "for ordinal in " + " ".join(str(i) for i in range(1, replicas or 0)) + ";" not in boot:
        fail("deploy/kubernetes/bootstrap.sh", f"does not add-node the pods 1..{(replicas or 1) - 1}")
    m = re.search(r"create secret generic (\S+) --from-file=(\w+)=", boot)

    # Secrets reach the pods as Kubernetes Secrets only.
    for wf, w, labels, spec in pods:
        for c in spec["containers"]:
            for e in c.get("env", []):
                if re.search(r"TOKEN|KEY|SECRET|PASSWORD", e["name"]) and "value" in e and not str(e["value"]).startswith("/"):
                    fail(wf, f"container {c['name']}: env {e['name']} has a literal value; take it from a Secret")
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref and e["name"] == "TOLLGATE_JOIN_TOKEN":
                    if not m or (ref["name"], ref["key"]) != (m.group(1), m.group(2)):
                        fail(wf, f"TOLLGATE_JOIN_TOKEN reads Secret {ref['name']}/{ref['key']}, bootstrap.sh makes {m.groups() if m else 'none'}")
    if not any(e.get("name") == "TOLLGATE_JOIN_TOKEN" and (e.get("valueFrom") or {}).get("secretKeyRef")
               for c in edge_spec["containers"] for e in c.get("env", [])):
        fail(ef, "the edge does not take TOLLGATE_JOIN_TOKEN from a Secret")
    mk = [v for v in cp_spec.get("volumes", []) if "secret" in v]
    if not mk:
        fail(f, "the master key does not come from a Secret volume")

    # Hardening: restricted Pod Security, the image's user, no service-account token.
    for wf, w, labels, spec in pods:
        name = f"{w['kind']}/{w['metadata']['name']}"
        psc = spec.get("securityContext", {})
        if spec.get("automountServiceAccountToken") is not False:
            fail(wf, f"{name}: automountServiceAccountToken must be false")
        if dockerfile_uid is not None and psc.get("runAsUser") != dockerfile_uid:
            fail(wf, f"{name}: runAsUser {psc.get('runAsUser')} is not the image's user {dockerfile_uid} (deploy/Dockerfile)")
        for c in spec["containers"]:
            sc = c.get("securityContext", {})
            checks = {
                "allowPrivilegeEscalation": sc.get("allowPrivilegeEscalation") is False,
                "readOnlyRootFilesystem": sc.get("readOnlyRootFilesystem") is True,
                "runAsNonRoot": sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True,
                "capabilities.drop: [ALL]": "ALL" in (sc.get("capabilities") or {}).get("drop", []),
                "seccompProfile RuntimeDefault": (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault",
                "resources.limits": bool((c.get("resources") or {}).get("limits")),
            }
            for what, ok in checks.items():
                if not ok:
                    fail(wf, f"{name} container {c['name']}: {what} not set")
    images = {c["image"] for _, _, _, spec in pods for c in spec["containers"]}
    if len(images) != 1:
        fail("deploy/kubernetes", f"the containers use different images {sorted(images)}: it is one binary")

    # NetworkPolicy: default deny, every port someone must reach is allowed, and the gRPC
    # (admin API, Raft) and peer ports only from the pods that need them.
    policies = by_kind.get("NetworkPolicy", [])
    if not any(p["spec"].get("podSelector") == {} and "Ingress" in p["spec"].get("policyTypes", [])
               and not p["spec"].get("ingress") for _, p in policies):
        fail("deploy/kubernetes/networkpolicy.yaml", "no default-deny ingress policy (podSelector: {}, no ingress rules)")
    for wf, w, labels, spec in pods:
        ports = container_ports(spec)
        allowed = {}  # port name -> list of rule `from` lists (None: from anywhere)
        for pf, p in policies:
            if not selects(p["spec"].get("podSelector", {}).get("matchLabels", {}), labels):
                continue
            for rule in p["spec"].get("ingress", []) or []:
                for port in rule.get("ports", []):
                    pn = port.get("port")
                    if isinstance(pn, str) and pn not in ports:
                        fail(pf, f"{p['metadata']['name']}: port {pn!r} is no port of {w['metadata']['name']}")
                    name = pn if isinstance(pn, str) else next((k for k, v in ports.items() if v == pn), str(pn))
                    allowed.setdefault(name, []).append(rule.get("from"))
        for pname in ports:
            if pname not in allowed:
                fail("deploy/kubernetes/networkpolicy.yaml", f"nothing may reach {w['metadata']['name']} port {pname}")
    def sources(port, target_labels):
        out = []
        for _, p in policies:
            if not selects(p["spec"].get("podSelector", {}).get("matchLabels", {}), target_labels):
                continue
            for rule in p["spec"].get("ingress", []) or []:
                if any(pp.get("port") == port for pp in rule.get("ports", [])):
                    out.append(rule.get("from"))
        return out

    for port, target, who in (("grpc", cp_labels, (cp_labels, edge_labels)), ("peer", edge_labels, (edge_labels,))):
        for frm in sources(port, target):
            if not frm:
                fail("deploy/kubernetes/networkpolicy.yaml", f"port {port} is open to every source")
                continue
            for peer in frm:
                sel = (peer.get("podSelector") or {}).get("matchLabels") or {}
                others = [lab for _, _, lab, _ in pods if lab not in who]
                narrow = (
                    set(peer) == {"podSelector"}
                    and any(selects(sel, lab) for lab in who)
                    and not any(selects(sel, lab) for lab in others)
                )
                if not narrow:
                    fail("deploy/kubernetes/networkpolicy.yaml", f"port {port} is open to {peer}, beyond the pods that need it")


# -- systemd ------------------------------------------------------------------------------

def unit_settings(text):
    """(section, key) -> [values] of a unit file, comments dropped, continuations joined."""
    out, section = {}, None
    for _, line in logical_lines(text):
        s = line.strip()
        if not s or s.startswith(("#", ";")):
            continue
        if s.startswith("["):
            section = s.strip("[]")
            continue
        k, _, v = s.partition("=")
        out.setdefault((section, k.strip()), []).append(v.strip())
    return out


def check_systemd(root, defaults, cli):
    units = {
        "control-plane": "deploy/systemd/tollgate-control-plane.service",
        "edge": "deploy/systemd/tollgate-edge.service",
    }
    dropins = {
        "control-plane": "deploy/systemd/mtls-control-plane.conf",
        "edge": "deploy/systemd/mtls-edge.conf",
    }
    required = {
        "DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
        "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes", "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes", "UMask": "0077",
        "SystemCallArchitectures": "native",
    }
    for sub, path in units.items():
        text = open(os.path.join(root, path), encoding="utf-8").read()
        st = unit_settings(text)
        svc = lambda k: st.get(("Service", k), [])  # noqa: E731
        for k, v in required.items():
            if v not in svc(k):
                fail(path, f"{k}={v} missing (have {svc(k) or 'nothing'})")
        for k in ("User", "Group"):
            if svc(k):
                fail(path, f"{k}= set: DynamicUser=yes makes the user")
        caps = svc("CapabilityBoundingSet")
        allowed_caps = {"control-plane": {""}, "edge": {"CAP_NET_BIND_SERVICE"}}[sub]
        if not caps or set(caps[-1].split() or [""]) != allowed_caps:
            fail(path, f"CapabilityBoundingSet={caps} — want {sorted(allowed_caps)}")
        state = svc("StateDirectory")
        exec_start = " ".join(svc("ExecStart"))
        if not state:
            fail(path, "no StateDirectory=")
        elif f"--data-dir /var/lib/{state[0]}" not in exec_start:
            fail(path, f"--data-dir is not /var/lib/{state[0]} (the StateDirectory)")
        if not re.search(rf"/usr/local/bin/tollgate {sub}\b", exec_start):
            fail(path, f"ExecStart does not run /usr/local/bin/tollgate {sub}")
        # Secrets come as systemd credentials, never as values in a unit.
        creds = {c.split(":", 1)[0] for c in svc("LoadCredential")}
        need = {"control-plane": ("master.key", "--master-key-file %d/master.key"),
                "edge": ("join-token", "--join-token-file %d/join-token")}[sub]
        if need[0] not in creds or need[1] not in exec_start:
            fail(path, f"the {need[0]} credential is not loaded and used ({need[1]})")
        for env in svc("Environment"):
            for assign in env.split():
                k = assign.split("=", 1)[0]
                if re.search(r"TOKEN|SECRET|PASSWORD|_KEY$", k) and not assign.split("=", 1)[1].startswith("%d/"):
                    fail(path, f"Environment= sets {k}: secrets come as credentials")
        # Defaults the env file may override must be the code's defaults.
        for assign in " ".join(svc("Environment")).split():
            k, _, v = assign.partition("=")
            flag = {"GRPC": "grpc", "HTTP": "http", "LISTEN": "listen", "ADMIN": "admin", "PEER": "peer"}.get(k)
            if flag and (sub, flag) in defaults:
                host, port = defaults[(sub, flag)]
                if v != f"{host}:{port}":
                    fail(path, f"Environment={k}={v}, the code's default of --{flag} is {host}:{port}")
                if not re.search(rf"--{flag} \"?\$?\$?\{{?{k}\b", exec_start):
                    fail(path, f"ExecStart does not pass ${k} to --{flag}")
        if cli:
            check_flags_in(path, text, cli)
            # EXTRA_ARGS examples in the comments are flags of this subcommand too.
            known = cli.flags([sub])
            for n, line in enumerate(text.splitlines(), 1):
                if "EXTRA_ARGS=" in line:
                    for flag in re.findall(r"(?<![\w-])--([a-z][a-z0-9-]*)", line):
                        if flag not in known:
                            fail(f"{path}:{n}", f"EXTRA_ARGS example: `tollgate {sub}` has no flag --{flag}")

        # The drop-in: mTLS files as credentials, the env naming exactly those.
        dpath = dropins[sub]
        dst = unit_settings(open(os.path.join(root, dpath), encoding="utf-8").read())
        dcreds = {c.split(":", 1)[0] for c in dst.get(("Service", "LoadCredential"), [])}
        denv = dict(a.split("=", 1) for e in dst.get(("Service", "Environment"), []) for a in e.split())
        want_env = {"TOLLGATE_TLS_CERT", "TOLLGATE_TLS_KEY", "TOLLGATE_TLS_CA"}
        if set(denv) != want_env:
            fail(dpath, f"Environment= sets {sorted(denv)}, want {sorted(want_env)}")
        for k, v in denv.items():
            if not v.startswith("%d/") or v[3:] not in dcreds:
                fail(dpath, f"{k}={v} is not one of its credentials %d/{sorted(dcreds)}")
        if cli:
            for k in want_env:
                if f"[env: {k}=" not in cli.help([sub]):
                    fail(dpath, f"`tollgate {sub}` does not read {k}")


# -- everywhere ---------------------------------------------------------------------------

SECRET_PATTERNS = [
    (re.compile(r"\btg[ake]_[0-9a-f]{16,}"), "a Tollgate token or key"),
    (re.compile(r"(?<![0-9a-fA-F])[0-9a-f]{64}(?![0-9a-fA-F])"), "64 hex characters (a master key?)"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
]


def check_no_secrets(root):
    files = [f for f in glob.glob(os.path.join(root, "deploy/**/*"), recursive=True) if os.path.isfile(f)]
    for f in files:
        try:
            text = open(f, encoding="utf-8").read()
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            for rx, what in SECRET_PATTERNS:
                if rx.search(line):
                    fail(f"{os.path.relpath(f, root)}:{n}", f"looks like {what}: secrets never go into files")


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--root", default=os.path.dirname(here))
    ap.add_argument("--bin", default=None)
    a = ap.parse_args()
    root = a.root

    defaults = readme_defaults(root)
    cli = None
    if a.bin and os.access(a.bin, os.X_OK):
        cli = Cli(a.bin)
        for (sub, flag), (host, port) in list(defaults.items()):
            d = cli.default([sub], flag)
            if d != f"{host}:{port}":
                fail("README.md", f"says --{flag} defaults to {host}:{port}, `tollgate {sub} --help` says {d}")
    else:
        notes.append(f"skipped the checks against `tollgate --help` (no executable {a.bin}; scripts/check builds it first)")

    m = re.search(r"^USER (\d+)(?::\d+)?$", open(os.path.join(root, "deploy/Dockerfile"), encoding="utf-8").read(), re.M)
    uid = int(m.group(1)) if m else None
    if uid is None:
        fail("deploy/Dockerfile", "no numeric USER")

    check_kubernetes(root, defaults, cli, uid)
    check_systemd(root, defaults, cli)
    if cli:
        for f in ["deploy/kubernetes/control-plane.yaml", "deploy/kubernetes/edge.yaml",
                  "deploy/kubernetes/bootstrap.sh", "deploy/README.md"]:
            p = os.path.join(root, f)
            if os.path.exists(p):
                check_flags_in(f, open(p, encoding="utf-8").read(), cli)
    check_no_secrets(root)

    for n in notes:
        print(f"note: {n}")
    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in deploy/", file=sys.stderr)
        return 1
    print("deploy/ checks: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
