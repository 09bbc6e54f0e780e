#!/usr/bin/env python3
"""Checks Strata's Kubernetes manifests (deploy/kubernetes) without a cluster.

    .venv/bin/python3 deploy/kubernetes/check.py              # every overlay: render, validate, assert
    .venv/bin/python3 deploy/kubernetes/check.py --self-test  # the check must fail on broken manifests
    .venv/bin/python3 deploy/kubernetes/check.py --smoke --strata BIN --agent BIN
                                                              # dev's and production's command lines, on loopback

Default mode, for every overlay:
  1. render it with `kubectl kustomize` (KUBECTL, else kubectl on PATH); with KUBECTL_COMPAT set to a second
     kubectl (e.g. Debian bookworm's 1.20, kustomize v2.0.3), render it with that one too and require the
     same objects (generated names' hash suffixes aside);
  2. validate every object with kubernetes-validate in strict mode (unknown fields are errors) against each
     Kubernetes version in VERSIONS; cert-manager objects, which it has no schema for, get rules of our own;
  3. assert, for every workload (Deployment, StatefulSet, DaemonSet): readiness and liveness probes on a
     declared port (Strata's: the kubelet's grpc probes on the plain probe port, --health-listen, readiness
     asking for strata.v1.Control or strata.v1.Inference, liveness for the whole server, leniently; etcd
     keeps its HTTP probes), requests and limits, a restrictive securityContext, a drain-long-enough grace period,
     no service-account token, pinned image tags (Strata's at the workspace version), a PodDisruptionBudget
     when replicas > 1, NetworkPolicies selecting it under a default deny and opening no probe port to
     pods; plus Services that select something and expose no probe port, Secrets that cert-manager issues with the identity the workload needs, and the cluster
     profile being a verbatim copy of one in examples/clusters.
Prints what it checked; exits 1 with a FAIL line per violation.

--self-test renders testdata/ (a workload whose probes were removed; an object with a field no schema has;
probes gone wrong: a TCP readiness probe, a liveness probe asking for the store-dependent service, args
without --health-listen, a Service exposing the probe port) and passes only if the check reports exactly
those violations: proof that the check can fail.

--smoke writes the Secrets with make-secrets (--etcd), lays them out as the kubelet would (Secret keys and
`items` as files) and runs rendered containers' command lines (args and env as rendered; pod IP 127.0.0.1,
free ports, Service names mapped to loopback) with the given binaries: dev's control plane and both agents
(they must register over mutual TLS under their workload identities), then production's etcd (one member,
the StatefulSet's flags; its HTTP probes must pass) and a control-plane replica on it (it must lead; then,
with etcd stopped, its readiness must fail while its liveness holds, and pass again once etcd is back). Every
port must accept TCP connections, every Strata container's grpc probes must pass as the kubelet runs them
(grpc.health.v1.Health/Check in plain HTTP/2 on the probe port, by a client of the standard library's here),
and every process must stop on SIGTERM within its grace period.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
OVERLAYS = ["dev", "production", "production-gpu", "external-etcd", "cert-manager"]
# Kubernetes minor versions validated against (kubernetes-validate ships 1.25 to 1.37 schemas): the two
# newest, and 1.30 for clusters that lag.
VERSIONS = ["1.30.0", "1.36.0", "1.37.0"]
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}
NAMESPACE = "strata"
STRATA_IMAGES = {"strata/strata", "strata/strata-edge-agent"}
# Grace periods: an agent may hold a request for --max-request-ms (60 s by default) and deregisters first;
# the control plane drains for at most 10 s (strata-proto's DRAIN_TIMEOUT) and steps down.
MIN_GRACE = {"agent": 75, "control-plane": 15, "store": 10}
# The probe port (`--health-listen`): grpc.health.v1.Health alone, in plain HTTP/2, for the kubelet's `grpc:`
# probes (they cannot do TLS; the main ports are mutual TLS only). Readiness asks for the role's service
# (the control plane's is NOT_SERVING while its store is unreachable; an agent's until it drains), liveness
# for the server as a whole (""), which a control plane waiting for its store still answers SERVING.
PROBE_PORT = 7401
READY_SERVICE = {"control-plane": "strata.v1.Control", "agent": "strata.v1.Inference"}
# The metrics port (`--metrics-listen`): Prometheus text at /metrics, plain HTTP/1.1. Open to Prometheus alone
# (a NetworkPolicy rule with a `from`), exposed by no Service, and announced with prometheus.io annotations.
METRICS_PORT = {"control-plane": 9400, "agent": 9410}
# A liveness probe must allow this long without an answer (failureThreshold x periodSeconds) before a restart.
MIN_LIVENESS_WINDOW = 30
USER = 65532
IDENTITY = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?\.(admin|reader|device|edge|cloud|controller)\.id\.strata$")
CERT_USAGES = {
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
    "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any", "server auth",
    "client auth", "code signing", "email protection", "s/mime", "ipsec end system", "ipsec tunnel",
    "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc",
}


def fail_usage(msg: str) -> None:
    print(f"check.py: {msg}", file=sys.stderr)
    sys.exit(2)


def need_modules():
    try:
        import yaml  # noqa: F401
        import kubernetes_validate  # noqa: F401
    except ImportError as e:
        fail_usage(
            f"{e}: run scripts/setup.sh (it installs PyYAML and kubernetes-validate into .venv from "
            "scripts/tools-requirements.txt), then use .venv/bin/python3"
        )


def kubectl_path(env: str, required: bool) -> str | None:
    value = os.environ.get(env)
    if not value and env == "KUBECTL":
        value = shutil.which("kubectl")
    if not value:
        if required:
            fail_usage("kubectl is missing: run scripts/setup.sh (Debian's kubernetes-client), or set KUBECTL")
        return None
    if not (os.path.isfile(value) and os.access(value, os.X_OK)):
        fail_usage(f"{env}={value} is not an executable")
    return value


def kubectl_version(kubectl: str) -> str:
    out = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True)
    text = (out.stdout + out.stderr).strip()
    m = re.search(r'GitVersion:"([^"]+)"', text) or re.search(r"Client Version: (\S+)", text)
    k = re.search(r"Kustomize Version: (\S+)", text)
    return (m.group(1) if m else text.splitlines()[0] if text else "?") + (f", kustomize {k.group(1)}" if k else "")


def render(kubectl: str, directory: Path) -> list[dict]:
    import yaml

    out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{kubectl} kustomize {directory} failed: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def normalise(docs: list[dict]) -> list[str]:
    """Objects as sorted JSON, with configMapGenerator hash suffixes (which differ between kustomize
    versions) replaced by a placeholder."""
    text = json.dumps(docs, sort_keys=True)
    text = re.sub(r'"(strata-[a-z-]+)-[a-z0-9]{10}"', r'"\1-HASH"', text)
    return sorted(json.dumps(d, sort_keys=True) for d in json.loads(text))


class Report:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.checked = 0
        self.secrets_mounted: set[str] = set()

    def ok(self, cond: bool, where: str, what: str) -> bool:
        self.checked += 1
        if not cond:
            self.failures.append(f"{where}: {what}")
        return cond


def name_of(doc: dict) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def selects(selector: dict | None, labels: dict) -> bool:
    """A label selector (matchLabels and matchExpressions) against labels; an empty selector selects all."""
    selector = selector or {}
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def role_of(pod_labels: dict) -> str:
    return {
        "strata-control-plane": "control-plane",
        "strata-edge-agent": "agent",
        "etcd": "store",
    }.get(pod_labels.get("app.kubernetes.io/name", ""), "?")


def workspace_version() -> str:
    text = (ROOT / "Cargo.toml").read_text()
    m = re.search(r'^\[workspace\.package\][^\[]*?^version\s*=\s*"([^"]+)"', text, re.M | re.S)
    if not m:
        m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
    return m.group(1) if m else "?"


# ---------------------------------------------------------------------------------------------- validation

def validate(docs: list[dict], overlay: str, rep: Report) -> None:
    import kubernetes_validate as kv
    from kubernetes_validate import utils as kvu

    for doc in docs:
        where = f"{overlay}: {name_of(doc)}"
        if doc.get("apiVersion", "").startswith("cert-manager.io/"):
            check_cert_manager_object(doc, where, rep)
            continue
        for version in VERSIONS:
            try:
                kv.validate(doc, version, strict=True)
                rep.ok(True, where, "")
            except kvu.SchemaNotFoundError as e:
                rep.ok(False, where, f"no schema to validate against: {e.message}")
            except kvu.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                rep.ok(False, where, f"invalid for Kubernetes {e.version} (strict): {path}: {e.message}")


def check_cert_manager_object(doc: dict, where: str, rep: Report) -> None:
    """kubernetes-validate has no schemas for CRDs: cert-manager.io/v1 Issuer and Certificate get a strict
    check of the fields used here against cert-manager's v1 API."""
    rep.ok(doc.get("apiVersion") == "cert-manager.io/v1", where, "cert-manager objects must be cert-manager.io/v1")
    spec = doc.get("spec") or {}
    if doc.get("kind") == "Issuer":
        kinds = [k for k in ("selfSigned", "ca", "vault", "venafi", "acme") if k in spec]
        rep.ok(len(kinds) == 1 and set(spec) == set(kinds), where, f"an Issuer has exactly one issuer type, got {sorted(spec)}")
        if "ca" in spec:
            rep.ok(isinstance(spec["ca"].get("secretName"), str), where, "a CA Issuer names its secretName")
        return
    if not rep.ok(doc.get("kind") == "Certificate", where, "unexpected cert-manager kind"):
        return
    allowed = {"secretName", "dnsNames", "ipAddresses", "commonName", "duration", "renewBefore", "usages",
               "privateKey", "issuerRef", "isCA", "subject", "uris", "secretTemplate", "revisionHistoryLimit"}
    rep.ok(set(spec) <= allowed, where, f"unknown Certificate fields {sorted(set(spec) - allowed)}")
    rep.ok(isinstance(spec.get("secretName"), str), where, "spec.secretName is required")
    issuer = spec.get("issuerRef") or {}
    rep.ok(isinstance(issuer.get("name"), str) and set(issuer) <= {"name", "kind", "group"}, where, "spec.issuerRef needs a name (and only name, kind, group)")
    for f in ("duration", "renewBefore"):
        if f in spec:
            rep.ok(bool(re.fullmatch(r"(\d+h)?(\d+m)?(\d+s)?", str(spec[f]))) and spec[f] != "", where, f"{f} must be a Go duration such as 720h")
    for u in spec.get("usages") or []:
        rep.ok(u in CERT_USAGES, where, f"unknown usage {u!r}")
    key = spec.get("privateKey") or {}
    rep.ok(set(key) <= {"algorithm", "size", "encoding", "rotationPolicy"}, where, "unknown privateKey fields")
    rep.ok(key.get("algorithm", "RSA") in {"RSA", "ECDSA", "Ed25519"}, where, "privateKey.algorithm")
    rep.ok(key.get("encoding", "PKCS1") in {"PKCS1", "PKCS8"}, where, "privateKey.encoding")
    rep.ok(key.get("rotationPolicy", "Always") in {"Never", "Always"}, where, "privateKey.rotationPolicy")
    # Strata's own: the cluster CA key must be PKCS#8 (rcgen loads it); identities carry one name under id.strata.
    if spec.get("isCA"):
        rep.ok(key.get("encoding") == "PKCS8", where, "a CA Strata loads with --ca-dir needs privateKey.encoding PKCS8")
    names = [n for n in spec.get("dnsNames") or [] if n.endswith(".id.strata")]
    if names:
        rep.ok(len(names) == 1, where, f"a Strata certificate carries exactly one identity, got {names}")
        rep.ok(all(IDENTITY.match(n) for n in names), where, f"identities are NAME.ROLE.id.strata: {names}")
        usages = set(spec.get("usages") or [])
        rep.ok({"server auth", "client auth"} <= usages, where, "a Strata identity needs server auth and client auth usages")


# --------------------------------------------------------------------------------------------- assertions

def containers_of(pod: dict) -> list[dict]:
    return list(pod.get("initContainers") or []) + list(pod.get("containers") or [])


def effective(pod_sc: dict, c_sc: dict, key: str):
    return c_sc[key] if key in c_sc else pod_sc.get(key)


def check_probe(probe: dict | None, kind: str, container: dict, where: str, rep: Report) -> None:
    if not rep.ok(isinstance(probe, dict), where, f"container {container['name']} has no {kind}"):
        return
    handlers = [h for h in ("grpc", "tcpSocket", "httpGet", "exec") if h in probe]
    rep.ok(len(handlers) == 1, where, f"{kind} of {container['name']} needs one handler")
    if not handlers:
        return
    handler = handlers[0]
    # The images have no shell and no tools: an exec probe cannot run.
    rep.ok(handler != "exec", where, f"{kind} of {container['name']} is an exec probe (the image has no shell)")
    if handler == "exec":
        return
    port = probe[handler].get("port")
    ports = container.get("ports") or []
    declared = {p.get("name") for p in ports} | {p.get("containerPort") for p in ports}
    rep.ok(port in declared, where, f"{kind} of {container['name']} probes port {port!r}, which the container does not declare")


def health_listen(args: list[str]) -> list[str]:
    """The values of --health-listen in args (`--health-listen=ADDR` or `--health-listen ADDR`)."""
    return flag_values(args, "--health-listen")


def check_strata_probes(c: dict, role: str, where: str, rep: Report) -> None:
    """A Strata server is probed by the kubelet's `grpc:` probes on its probe port (--health-listen), never on
    its mutual-TLS port: readiness asks for the role's service, liveness for the server as a whole."""
    name = c["name"]
    declared = [p for p in c.get("ports") or [] if p.get("containerPort") == PROBE_PORT]
    rep.ok(len(declared) == 1 and declared[0].get("name") == "probes" and declared[0].get("protocol", "TCP") == "TCP",
           where, f"container {name} must declare the probe port: name probes, containerPort {PROBE_PORT}, TCP")
    listen = health_listen(c.get("args") or [])
    if rep.ok(len(listen) == 1, where, f"container {name} has no --health-listen=0.0.0.0:{PROBE_PORT} (one, in args): "
              "its grpc probes would find nothing listening"):
        host, _, port = listen[0].rpartition(":")
        rep.ok(port == str(PROBE_PORT) and host in ("0.0.0.0", "[::]", "$(POD_IP)"), where,
               f"--health-listen={listen[0]}: the kubelet probes the pod IP on port {PROBE_PORT}; use 0.0.0.0:{PROBE_PORT}")
    why = {
        ("control-plane", "readinessProbe", ""): "a replica whose store is unreachable would stay ready",
        ("control-plane", "livenessProbe", "strata.v1.Control"): "the kubelet would restart a replica that waits for its store",
    }
    for kind, want in (("readinessProbe", READY_SERVICE[role]), ("livenessProbe", "")):
        probe = c.get(kind)
        if not isinstance(probe, dict):
            continue  # check_probe reports it
        grpc = probe.get("grpc")
        handlers = sorted(h for h in ("grpc", "tcpSocket", "httpGet", "exec") if h in probe)
        if not rep.ok(isinstance(grpc, dict) and grpc.get("port") == PROBE_PORT, where,
                      f"{kind} of {name} must be a grpc probe on the probe port {PROBE_PORT} (the main port is mutual "
                      f"TLS only), is {', '.join(handlers) or 'none'}" + (f" on {grpc.get('port')!r}" if isinstance(grpc, dict) else "")):
            continue
        service = grpc.get("service", "")
        rep.ok(service == want, where, f"{kind} of {name} asks for service {service!r}, must ask for {want!r}"
               + (f": {why[(role, kind, service)]}" if (role, kind, service) in why else ""))
    liveness = c.get("livenessProbe")
    if isinstance(liveness, dict):
        window = liveness.get("failureThreshold", 3) * liveness.get("periodSeconds", 10)
        rep.ok(window >= MIN_LIVENESS_WINDOW, where, f"livenessProbe of {name} restarts after {window} s without an "
               f"answer (failureThreshold x periodSeconds): allow at least {MIN_LIVENESS_WINDOW} s")


def flag_values(args: list[str], flag: str) -> list[str]:
    """The values of `flag` in args (`FLAG=VALUE` or `FLAG VALUE`)."""
    return [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")] + \
        [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]


def check_strata_metrics(c: dict, role: str, annotations: dict, where: str, rep: Report) -> None:
    """A Strata server serves its metrics on its metrics port (--metrics-listen), declared as `metrics`, and
    the pod says so to annotation-based Prometheus discovery."""
    name, port = c["name"], METRICS_PORT[role]
    declared = [p for p in c.get("ports") or [] if p.get("name") == "metrics"]
    rep.ok(len(declared) == 1 and declared[0].get("containerPort") == port and declared[0].get("protocol", "TCP") == "TCP",
           where, f"container {name} must declare the metrics port: name metrics, containerPort {port}, TCP")
    listen = flag_values(c.get("args") or [], "--metrics-listen")
    rep.ok(listen == [f"0.0.0.0:{port}"], where, f"container {name} must serve its metrics with --metrics-listen=0.0.0.0:{port} "
           f"(one, in args), has {listen}")
    want = {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}
    got = {k: annotations.get(k) for k in want}
    rep.ok(got == want, where, f"pod annotations must announce the metrics port: {want}, are {got}")


def check_workload(doc: dict, docs: list[dict], overlay: str, version: str, rep: Report, summary: list[str]) -> None:
    where = f"{overlay}: {name_of(doc)}"
    spec = doc["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"].get("labels") or {}
    role = role_of(labels)
    rep.ok(role != "?", where, "pod lacks app.kubernetes.io/name strata-control-plane, strata-edge-agent or etcd")
    rep.ok(selects(spec.get("selector"), labels), where, "the selector does not select the pod template")
    pod_sc = pod.get("securityContext") or {}

    # Pod-level hardening.
    rep.ok(pod.get("automountServiceAccountToken") is False, where, "automountServiceAccountToken must be false (no workload uses the API)")
    for f in ("hostNetwork", "hostPID", "hostIPC"):
        rep.ok(not pod.get(f), where, f"{f} must be off")
    for v in pod.get("volumes") or []:
        rep.ok("hostPath" not in v, where, f"volume {v['name']} is a hostPath")
    grace = pod.get("terminationGracePeriodSeconds")
    minimum = MIN_GRACE.get(role, 10)
    rep.ok(isinstance(grace, int) and grace >= minimum, where, f"terminationGracePeriodSeconds {grace!r}: a {role} needs at least {minimum} s to drain")

    for c in containers_of(pod):
        cw = f"{where} container {c['name']}"
        # Probes.
        check_probe(c.get("readinessProbe"), "readinessProbe", c, where, rep)
        check_probe(c.get("livenessProbe"), "livenessProbe", c, where, rep)
        if role in READY_SERVICE:
            check_strata_probes(c, role, where, rep)
            check_strata_metrics(c, role, spec["template"]["metadata"].get("annotations") or {}, where, rep)
        # Resources.
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            for r in ("cpu", "memory"):
                rep.ok(r in (res.get(part) or {}), cw, f"no resources.{part}.{r}")
        # Security context: container settings win over the pod's.
        sc = c.get("securityContext") or {}
        rep.ok(effective(pod_sc, sc, "runAsNonRoot") is True, cw, "runAsNonRoot must be true")
        rep.ok(effective(pod_sc, sc, "runAsUser") == USER, cw, f"runAsUser must be {USER}")
        rep.ok(sc.get("readOnlyRootFilesystem") is True, cw, "readOnlyRootFilesystem must be true")
        rep.ok(sc.get("allowPrivilegeEscalation") is False, cw, "allowPrivilegeEscalation must be false")
        rep.ok(not sc.get("privileged"), cw, "privileged must be off")
        caps = sc.get("capabilities") or {}
        rep.ok("ALL" in (caps.get("drop") or []), cw, "capabilities must drop ALL")
        rep.ok(not caps.get("add"), cw, f"capabilities must add nothing, adds {caps.get('add')}")
        seccomp = (effective(pod_sc, sc, "seccompProfile") or {}).get("type")
        rep.ok(seccomp == "RuntimeDefault", cw, f"seccompProfile must be RuntimeDefault, is {seccomp}")
        for p in c.get("ports") or []:
            rep.ok(not p.get("hostPort"), cw, "hostPort is set (Pod Security's restricted profile forbids it)")
        # Images: pinned, never latest; Strata's at the workspace version.
        image = c.get("image", "")
        repo, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
        rep.ok(bool(tag) and tag != "latest", cw, f"image {image!r} must carry a pinned tag, not latest or none")
        if repo in STRATA_IMAGES:
            rep.ok(tag == version, cw, f"image {image} should be tagged {version} (the workspace version)")
        # $(VAR) in args must be defined in env (else Kubernetes passes the text through).
        env_names = {e["name"] for e in c.get("env") or []}
        for a in (c.get("command") or []) + (c.get("args") or []):
            for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", a):
                rep.ok(var in env_names, cw, f"argument {a!r} uses $({var}), which env does not define")
        # Strata's agents: their own flags.
        args = c.get("args") or []
        if role == "agent":
            rep.ok("--no-renew" in args, cw, "agents with a Secret identity run with --no-renew (the Secret is rotated for them)")
            rep.ok(any(a.startswith("--advertise=$(") for a in args), cw, "agents advertise an address from the downward API")
        if role in ("agent", "control-plane"):
            for f in ("--tls-ca=", "--tls-cert=", "--tls-key="):
                rep.ok(any(a.startswith(f) for a in args), cw, f"no {f[:-1]}: every Strata server runs mutual TLS here")
            rep.ok("--insecure" not in args, cw, "--insecure has no place in these manifests")

    # Replicas > 1 need a PodDisruptionBudget.
    replicas = spec.get("replicas", 1) if doc["kind"] != "DaemonSet" else None
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget" and selects(d["spec"].get("selector"), labels)]
    if replicas is not None and replicas > 1:
        rep.ok(bool(pdbs), where, f"{replicas} replicas but no PodDisruptionBudget selects them")
    # NetworkPolicies: a default deny both ways, and at least one policy of its own.
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    deny = [p for p in policies if not (p["spec"].get("podSelector") or {}) and set(p["spec"].get("policyTypes") or []) >= {"Ingress", "Egress"}
            and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    own = [p for p in policies if (p["spec"].get("podSelector") or {}) and selects(p["spec"]["podSelector"], labels)]
    rep.ok(bool(deny), where, "no default-deny NetworkPolicy (empty podSelector, Ingress and Egress, no rules)")
    rep.ok(bool(own), where, "no NetworkPolicy selects this workload's pods")
    summary.append(
        f"    {doc['kind']:<11} {doc['metadata']['name']:<22} replicas={replicas if replicas is not None else 'per node':<8} "
        f"grace={grace}s pdb={'yes' if pdbs else 'no':<3} policies={','.join(p['metadata']['name'] for p in own)}"
    )


def check_overlay(overlay: str, docs: list[dict], version: str, rep: Report) -> list[str]:
    summary: list[str] = []
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
        if d["kind"] not in ("Namespace",):
            rep.ok(d["metadata"].get("namespace") == NAMESPACE, f"{overlay}: {name_of(d)}", f"namespace must be {NAMESPACE}")
    workloads = [d for d in docs if d["kind"] in WORKLOAD_KINDS]
    rep.ok(bool(workloads), overlay, "renders no workload")
    for w in workloads:
        check_workload(w, docs, overlay, version, rep, summary)
    pods = [(w, w["spec"]["template"]) for w in workloads]

    # Services select a workload and target a port it declares.
    for s in by_kind.get("Service", []):
        where = f"{overlay}: {name_of(s)}"
        matched = [w for w, t in pods if selects({"matchLabels": s["spec"].get("selector") or {}}, t["metadata"].get("labels") or {})]
        rep.ok(bool(matched), where, "selects no workload")
        for p in s["spec"].get("ports") or []:
            target = p.get("targetPort", p.get("port"))
            for w in matched:
                declared = {q.get(k) for c in w["spec"]["template"]["spec"]["containers"] for q in c.get("ports") or [] for k in ("name", "containerPort")}
                rep.ok(target in declared, where, f"targetPort {target!r} is not a port of {name_of(w)}")
            # The probe port is the kubelet's alone, the metrics port Prometheus's.
            rep.ok(target not in ("probes", PROBE_PORT) and p.get("port") != PROBE_PORT, where,
                   f"port {p.get('name') or p.get('port')} exposes the probe port ({PROBE_PORT}): it is for the kubelet only")
            metrics_ports = set(METRICS_PORT.values())
            rep.ok(target != "metrics" and target not in metrics_ports and p.get("port") not in metrics_ports, where,
                   f"port {p.get('name') or p.get('port')} exposes a metrics port: Prometheus scrapes pods directly")
    # NetworkPolicies open no probe port to pods: the kubelet probes from the node, which is always allowed.
    strata_pods = [t["metadata"].get("labels") or {} for _, t in pods if role_of(t["metadata"].get("labels") or {}) in READY_SERVICE]
    for np in by_kind.get("NetworkPolicy", []):
        if not any(selects(np["spec"].get("podSelector"), labels) for labels in strata_pods):
            continue
        for i, rule in enumerate(np["spec"].get("ingress") or []):
            ports = rule.get("ports") or []
            opens = [q for q in ports if q.get("port") in (PROBE_PORT, "probes")
                     or (isinstance(q.get("port"), int) and q["port"] <= PROBE_PORT <= q.get("endPort", 0))]
            rep.ok(bool(ports) and not opens,
                   f"{overlay}: {name_of(np)}", f"ingress rule {i} opens the probe port {PROBE_PORT} to pods (list its ports, "
                   "without the probe port: the kubelet's probes come from the node, which NetworkPolicy always allows)")
    # The metrics ports: opened only to named sources (Prometheus), and opened for every Strata workload.
    metrics_ports = set(METRICS_PORT.values())
    scraped: set[str] = set()
    for np in by_kind.get("NetworkPolicy", []):
        selected = [labels for labels in strata_pods if selects(np["spec"].get("podSelector"), labels)]
        if not selected:
            continue
        for i, rule in enumerate(np["spec"].get("ingress") or []):
            opens = {q.get("port") for q in rule.get("ports") or []} & (metrics_ports | {"metrics"})
            if not opens:
                continue
            rep.ok(bool(rule.get("from")), f"{overlay}: {name_of(np)}",
                   f"ingress rule {i} opens a metrics port ({sorted(map(str, opens))}) to any source: allow Prometheus alone")
            if rule.get("from"):
                scraped |= {role_of(labels) for labels in selected if METRICS_PORT[role_of(labels)] in opens}
    for role in sorted({role_of(labels) for labels in strata_pods} - scraped):
        rep.ok(False, overlay, f"no NetworkPolicy lets Prometheus reach the {role}'s metrics port {METRICS_PORT[role]}")
    # PodDisruptionBudgets select something.
    for p in by_kind.get("PodDisruptionBudget", []):
        rep.ok(any(selects(p["spec"].get("selector"), t["metadata"].get("labels") or {}) for _, t in pods), f"{overlay}: {name_of(p)}", "selects no workload")

    # The cluster profile is a verbatim copy of an example.
    for cm in by_kind.get("ConfigMap", []):
        if cm["metadata"]["name"].startswith("strata-cluster"):
            text = (cm.get("data") or {}).get("cluster.toml", "")
            examples = {Path(p).name: Path(p).read_text() for p in glob.glob(str(ROOT / "examples/clusters/*.toml"))}
            rep.ok(text in examples.values(), f"{overlay}: {name_of(cm)}", "cluster.toml is not a verbatim copy of a profile in examples/clusters (copy it again)")

    # Secrets the workloads mount; with cert-manager, each must be issued, with the identity the workload needs.
    certs = {c["spec"]["secretName"]: c for c in by_kind.get("Certificate", [])}
    issuers = {i["metadata"]["name"] for i in by_kind.get("Issuer", [])}
    for c in by_kind.get("Certificate", []):
        ref = c["spec"]["issuerRef"]["name"]
        rep.ok(ref in issuers, f"{overlay}: {name_of(c)}", f"issuerRef {ref} is not an Issuer here")
    for i in by_kind.get("Issuer", []):
        ca = (i["spec"].get("ca") or {}).get("secretName")
        if ca:
            rep.ok(ca in certs, f"{overlay}: {name_of(i)}", f"CA Secret {ca} is not issued by a Certificate here")
    secrets_needed = set()
    for w, t in pods:
        pod = t["spec"]
        args = [a for c in pod["containers"] for a in c.get("args") or []]
        tier = next((a.split("=", 1)[1] for a in args if a.startswith("--tier=")), None)
        role = role_of(t["metadata"].get("labels") or {})
        for v in pod.get("volumes") or []:
            secret = (v.get("secret") or {}).get("secretName")
            if not secret:
                continue
            secrets_needed.add(secret)
            if not certs:
                continue
            where = f"{overlay}: {name_of(w)}"
            if not rep.ok(secret in certs, where, f"mounts Secret {secret}, which no Certificate issues"):
                continue
            cert = certs[secret]["spec"]
            ids = [n for n in cert.get("dnsNames") or [] if n.endswith(".id.strata")]
            mounted_as_identity = any(m["name"] == v["name"] and m["mountPath"] == "/etc/strata/tls" for c in pod["containers"] for m in c.get("volumeMounts") or [])
            if mounted_as_identity:
                want = {"control-plane": "controller", "agent": tier}.get(role)
                rep.ok(len(ids) == 1 and ids[0].split(".")[1] == want, where, f"its identity Secret {secret} must name a {want} identity, has {ids}")
            for item in (v["secret"].get("items") or []):
                rep.ok(item["key"] in ("ca.crt", "tls.crt", "tls.key"), where, f"maps key {item['key']}, which cert-manager does not write")
    rep.secrets_mounted |= secrets_needed
    summary.append(f"    Secrets mounted: {', '.join(sorted(secrets_needed))}" + (" (each issued by a Certificate)" if certs else " (created beforehand: make-secrets or docs/deploy.md)"))
    return summary


def run_checks(dirs: list[tuple[str, Path]], kubectl: str, compat: str | None) -> Report:
    version = workspace_version()
    rep = Report()
    for label, directory in dirs:
        try:
            docs = render(kubectl, directory)
        except RuntimeError as e:
            rep.ok(False, label, str(e))
            continue
        if compat:
            try:
                old = render(compat, directory)
                rep.ok(normalise(old) == normalise(docs), label, f"{compat} renders different objects than {kubectl} (generator hashes aside)")
            except RuntimeError as e:
                rep.ok(False, label, str(e))
        before = len(rep.failures)
        validate(docs, label, rep)
        summary = check_overlay(label, docs, version, rep)
        kinds: dict[str, int] = {}
        for d in docs:
            kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
        status = "ok" if len(rep.failures) == before else f"{len(rep.failures) - before} violation(s)"
        print(f"  {label}: {len(docs)} objects ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}): {status}")
        for line in summary:
            print(line)
    return rep


# ------------------------------------------------------------------------------------------------ modes

def main_check(args) -> int:
    need_modules()
    import kubernetes_validate

    kubectl = kubectl_path("KUBECTL", True)
    compat = kubectl_path("KUBECTL_COMPAT", False)
    print(f"rendering with {kubectl} ({kubectl_version(kubectl)})")
    if compat:
        print(f"  and with KUBECTL_COMPAT={compat} ({kubectl_version(compat)}): the renders must agree")
    print(f"validating with kubernetes-validate {kubernetes_validate.__version__}, strict, against Kubernetes "
          f"{', '.join(v.rsplit('.', 1)[0] for v in VERSIONS)}")
    rep = run_checks([(o, HERE / "overlays" / o) for o in OVERLAYS], kubectl, compat)
    # secrets.example.yaml documents every Secret some overlay mounts, and validates.
    import yaml
    example = [d for d in yaml.safe_load_all((HERE / "secrets.example.yaml").read_text()) if d]
    validate(example, "secrets.example.yaml", rep)
    names = {d["metadata"]["name"] for d in example}
    rep.ok(names == rep.secrets_mounted, "secrets.example.yaml",
           f"documents {sorted(names)}, but the overlays mount {sorted(rep.secrets_mounted)}")
    print(f"  secrets.example.yaml: documents the {len(names)} Secrets the overlays mount")
    print(f"{rep.checked} checks on {len(OVERLAYS)} overlays")
    if rep.failures:
        for f in rep.failures:
            print(f"FAIL {f}")
        print(f"{len(rep.failures)} violation(s)")
        return 1
    print("all overlays render, validate and meet the workload rules")
    return 0


# What the self-test's broken manifests must be caught for (testdata/README.md).
SELF_TEST_EXPECT = [
    ("no-probes: Deployment/strata-cloud-agent", "has no readinessProbe"),
    ("no-probes: Deployment/strata-cloud-agent", "has no livenessProbe"),
    ("unknown-field: Deployment/strata-cloud-agent", "Additional properties are not allowed ('readinesProbe' was unexpected)"),
    ("wrong-probes: Deployment/strata-cloud-agent", "readinessProbe of agent must be a grpc probe on the probe port 7401"),
    ("wrong-probes: StatefulSet/strata-control-plane", "livenessProbe of control-plane asks for service 'strata.v1.Control', must ask for ''"),
    ("wrong-probes: Deployment/strata-edge-agent", "container agent has no --health-listen=0.0.0.0:7401"),
    ("wrong-probes: Service/strata-control-plane", "exposes the probe port (7401)"),
    ("open-metrics: NetworkPolicy/metrics-for-all", "opens a metrics port (['9410']) to any source"),
    ("open-metrics: Service/strata-control-plane-metrics", "exposes a metrics port"),
    ("open-metrics: Deployment/strata-cloud-agent", "pod annotations must announce the metrics port"),
]


def main_self_test(args) -> int:
    need_modules()
    kubectl = kubectl_path("KUBECTL", True)
    print("self-test: the check must fail on testdata/ (a workload without probes; a misspelt field; probes gone wrong; metrics opened too widely)")
    dirs = [(d.name, d) for d in sorted((HERE / "testdata").iterdir()) if (d / "kustomization.yaml").exists()]
    rep = run_checks(dirs, kubectl, None)
    for f in rep.failures:
        print(f"  caught: {f}")
    missing = [(w, m) for w, m in SELF_TEST_EXPECT if not any(f.startswith(w) and m in f for f in rep.failures)]
    unexpected = [f for f in rep.failures if not any(f.startswith(w) and m in f for w, m in SELF_TEST_EXPECT)]
    if missing:
        for w, m in missing:
            print(f"FAIL self-test: the check did not report \"{m}\" for {w}")
        return 1
    if unexpected:
        for f in unexpected:
            print(f"FAIL self-test: unexpected violation (each testdata object should break one rule): {f}")
        return 1
    print(f"self-test passed: the check reports the {len(SELF_TEST_EXPECT)} planted violations, and only those")
    return 0


# ------------------------------------------------------------------------------------------------ smoke

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, deadline: float) -> bool:
    """Waits until the port accepts a TCP connection (connect, then close)."""
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


class ProbeFailed(Exception):
    pass


HEALTH_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def grpc_health(port: int, service: str, timeout: float) -> str:
    """What the kubelet's `grpc:` probe does, with the standard library alone (no grpcio here): one
    grpc.health.v1.Health/Check call in plain HTTP/2 (h2c with prior knowledge, no TLS) to 127.0.0.1:port.
    Returns the status it answers (the kubelet passes only SERVING); raises ProbeFailed, or OSError when the
    port refuses, when no status comes back (a gRPC error such as NOT_FOUND for an unknown service, whose
    HPACK-coded trailers this client does not decode)."""

    def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
        return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload

    def hpack_int(n: int, prefix: int) -> bytes:  # RFC 7541 5.1, the first byte's other bits zero
        top = (1 << prefix) - 1
        if n < top:
            return bytes([n])
        out, n = [top], n - top
        while n >= 128:
            out.append(n % 128 + 128)
            n //= 128
        return bytes(out + [n])

    def varint(n: int) -> bytes:  # protobuf's
        out = b""
        while n >= 128:
            out += bytes([n % 128 + 128])
            n //= 128
        return out + bytes([n])

    def read_varint(b: bytes, i: int) -> tuple[int, int]:
        n, shift = 0, 0
        while True:
            if i >= len(b):
                raise ProbeFailed("a truncated HealthCheckResponse")
            n |= (b[i] & 0x7F) << shift
            i, shift = i + 1, shift + 7
            if b[i - 1] < 128:
                return n, i

    # RFC 7541 6.2.2: literal header fields without indexing, new names, no Huffman coding.
    headers = b"".join(
        b"\x00" + hpack_int(len(k), 7) + k + hpack_int(len(v), 7) + v
        for k, v in ((k.encode(), v.encode()) for k, v in (
            (":method", "POST"), (":scheme", "http"), (":path", "/grpc.health.v1.Health/Check"),
            (":authority", f"127.0.0.1:{port}"), ("content-type", "application/grpc"), ("te", "trailers"),
            ("user-agent", "kube-probe/check.py"))))
    request = b"\x0a" + varint(len(service.encode())) + service.encode() if service else b""  # HealthCheckRequest
    message = b"\x00" + len(request).to_bytes(4, "big") + request  # uncompressed, length-prefixed
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0)  # preface, SETTINGS
                  + frame(1, 0x4, 1, headers) + frame(0, 0x1, 1, message))  # HEADERS, DATA + END_STREAM
        buf, data = b"", b""

        def read(n: int) -> bytes:
            nonlocal buf
            while len(buf) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ProbeFailed(f"no answer within {timeout} s")
                s.settimeout(left)
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    raise ProbeFailed(f"no answer within {timeout} s") from None
                if not chunk:
                    raise ProbeFailed("the connection closed before the answer")
                buf += chunk
            out, buf = buf[:n], buf[n:]
            return out

        while True:
            head = read(9)
            kind, flags, stream = head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
            payload = read(int.from_bytes(head[:3], "big"))
            if kind == 4 and not flags & 0x1:  # SETTINGS: acknowledge
                s.sendall(frame(4, 0x1, 0))
            elif kind == 6 and not flags & 0x1:  # PING: answer
                s.sendall(frame(6, 0x1, 0, payload))
            elif kind == 7 and int.from_bytes(payload[:4], "big") & 0x7FFFFFFF < 1:  # GOAWAY before our stream
                raise ProbeFailed(f"GOAWAY, error code {int.from_bytes(payload[4:8], 'big')}")
            elif stream == 1 and kind == 3:
                raise ProbeFailed(f"the stream was reset, error code {int.from_bytes(payload[:4], 'big')}")
            elif stream == 1 and kind in (0, 1):  # DATA, or HEADERS (the response's, or its trailers)
                if kind == 0:
                    if flags & 0x8:  # PADDED
                        payload = payload[1:len(payload) - payload[0]]
                    data += payload
                if flags & 0x1:  # END_STREAM
                    break
    if len(data) < 5:
        raise ProbeFailed("no HealthCheckResponse: the server answered with a gRPC error (NOT_FOUND for a service it does not know)")
    if data[0]:
        raise ProbeFailed("a compressed HealthCheckResponse, which was not asked for")
    body, i, status = data[5:5 + int.from_bytes(data[1:5], "big")], 0, 0
    while i < len(body):
        key, i = read_varint(body, i)
        if key == 0x08:  # field 1, status
            status, i = read_varint(body, i)
        elif key & 7 == 0:
            _, i = read_varint(body, i)
        elif key & 7 == 2:
            n, i = read_varint(body, i)
            i += n
        else:
            raise ProbeFailed(f"an unexpected field in the HealthCheckResponse ({key})")
    return HEALTH_STATUS.get(status, str(status))


def poll_health(port: int, service: str, timeout: float, want: str, within: float) -> tuple[bool, str, float]:
    """Runs grpc_health until it answers `want` (or `within` seconds pass): (got it, the last answer, seconds)."""
    t0 = time.time()
    while True:
        try:
            last = grpc_health(port, service, timeout)
        except (ProbeFailed, OSError) as e:
            last = f"{type(e).__name__}: {e}"
        if last == want or time.time() - t0 > within:
            return last == want, last, time.time() - t0
        time.sleep(0.3)


def lay_out_volumes(pod: dict, container: dict, secrets: dict, configmaps: dict, root: Path) -> dict[str, str]:
    """Materialises a container's volumes under root as the kubelet would; returns mountPath -> local dir."""
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    claims = {t["metadata"]["name"] for t in pod.get("_claims") or []}
    mounts = {}
    for m in container.get("volumeMounts") or []:
        local = root / m["name"]
        local.mkdir(parents=True, exist_ok=True)
        v = volumes.get(m["name"])
        if v is None:
            if m["name"] not in claims:
                raise RuntimeError(f"volume {m['name']} is neither a pod volume nor a claim template")
        elif "secret" in v or "configMap" in v:
            src = v.get("secret") or v.get("configMap")
            ref = src.get("secretName") or src.get("name")
            data = (secrets if "secret" in v else configmaps).get(ref)
            if data is None:
                raise RuntimeError(f"volume {m['name']}: {ref} is not among the objects given")
            items = src.get("items") or [{"key": k, "path": k} for k in data]
            for it in items:
                if it["key"] not in data:
                    raise RuntimeError(f"volume {m['name']}: {ref} has no key {it['key']}")
                (local / it["path"]).write_bytes(data[it["key"]])
        mounts[m["mountPath"]] = str(local)
    return mounts


class Smoke:
    """Runs rendered containers as local processes: args and env as rendered, downward-API values for one
    pod on loopback, volumes laid out as the kubelet would, ports and Service names mapped to loopback."""

    def __init__(self, tmp: Path, secrets: dict, binaries: dict[str, str]) -> None:
        self.tmp, self.secrets, self.binaries = tmp, secrets, binaries
        self.procs: list[tuple[str, subprocess.Popen, int]] = []
        self.failures: list[str] = []
        # Per container: its declared probe port -> the loopback port it was given here.
        self.probe_ports: dict[str, dict[int, int]] = {}

    def start(self, w: dict, docs: list[dict], port: int, replace: dict[str, str], binary: str | None = None) -> tuple[str, dict] | None:
        pod = dict(w["spec"]["template"]["spec"])
        pod["_claims"] = w["spec"].get("volumeClaimTemplates")
        configmaps = {d["metadata"]["name"]: {k: v.encode() for k, v in (d.get("data") or {}).items()} for d in docs if d["kind"] == "ConfigMap"}
        c = pod["containers"][0]
        label = f"{name_of(w)}/{c['name']}"
        # The plain side ports (--health-listen, --metrics-listen), each mapped to a loopback port of its own.
        # (etcd's own metrics port is mapped by the caller, through `replace`.)
        strata = c["image"].rsplit(":", 1)[0] in STRATA_IMAGES
        probe_ports = {q["containerPort"]: free_port() for q in c.get("ports") or []
                       if q.get("name") == "probes" or (strata and q.get("name") == "metrics")}
        self.probe_ports[label] = probe_ports
        mounts = lay_out_volumes(pod, c, self.secrets, configmaps, self.tmp / w["metadata"]["name"] / c["name"])
        env = {"PATH": os.environ.get("PATH", "")}
        for e in c.get("env") or []:
            field = e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            if "value" in e:
                env[e["name"]] = e["value"]
            elif field in ("status.podIP", "status.hostIP"):
                env[e["name"]] = "127.0.0.1"
            elif field == "metadata.name":
                env[e["name"]] = w["metadata"]["name"] + "-0"
            else:
                raise RuntimeError(f"{label}: env {e['name']} comes from something the smoke test cannot provide")

        def localise(a: str) -> str:
            for var, value in env.items():
                a = a.replace(f"$({var})", value)
            for old, new in replace.items():  # Service and member names, and their ports
                a = re.sub(old, new, a)
            a = re.sub(r"(?<=:)(7400|7410|30741)\b", str(port), a)  # the listen and advertised port: this process's
            for declared, local in probe_ports.items():  # the probe and metrics ports: their own
                a = re.sub(rf"(?<=:){declared}\b", str(local), a)
            a = a.replace("0.0.0.0:", "127.0.0.1:")  # a pod's own network namespace; here, loopback only
            for path in sorted(mounts, key=len, reverse=True):
                a = a.replace(path, mounts[path])
            return a

        env = {k: localise(v) for k, v in env.items()}
        argv = [binary or self.binaries[c["image"].rsplit(":", 1)[0]]] + [localise(a) for a in (c.get("command") or [])[1:] + (c.get("args") or [])]
        log = open(self.tmp / f"{w['metadata']['name']}.log", "a")  # appended to when restarted
        print(f"  starting {label}: {' '.join(argv[1:])}")
        p = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp, start_new_session=True)
        self.procs.append((label, p, pod.get("terminationGracePeriodSeconds", 30)))
        for q in [port] + list(probe_ports.values()):
            if not wait_port(q, time.time() + 20):
                self.failures.append(f"{label}: port {q}{' (a side port)' if q != port else ''} never accepted a connection")
                return None
        if p.poll() is not None:
            self.failures.append(f"{label}: exited with {p.returncode}")
            return None
        print(f"    {label}: accepts TCP connections on its port" + (" and its probe port" if probe_ports else ""))
        if not self.grpc_probes(label, c):
            return None
        for q in c.get("ports") or []:
            if q.get("name") != "metrics" or not strata:
                continue
            url = f"http://127.0.0.1:{probe_ports[q['containerPort']]}/metrics"
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    body = r.read().decode()
            except (OSError, ValueError) as e:
                self.failures.append(f"{label}: GET {url} failed: {e}")
                return None
            if "strata_build_info{" not in body:
                self.failures.append(f"{label}: {url} does not serve Strata's metrics: {body[:200]!r}")
                return None
            print(f"    serves Prometheus metrics on its metrics port ({len(body.splitlines())} lines)")
        if probe_ports:
            try:
                answer = grpc_health(port, "", 2)
                self.failures.append(f"{label}: its main port answered a plain health check ({answer}): it should be mutual TLS only")
                return None
            except (ProbeFailed, OSError):
                print("    its main port refuses the same check in plain HTTP/2 (mutual TLS only: why the probe port exists)")
        return label, c

    def grpc_probe(self, label: str, c: dict, kind: str, want: str = "SERVING", within: float = 20) -> tuple[bool, str, float]:
        """Runs the container's `grpc:` probe `kind` as the kubelet would (its service, its timeoutSeconds) on
        the loopback port its probe port was given, until it answers `want`."""
        probe = c[kind]
        return poll_health(self.probe_ports[label][probe["grpc"]["port"]], probe["grpc"].get("service", ""),
                           probe.get("timeoutSeconds", 1), want, within)

    def grpc_probes(self, label: str, c: dict) -> bool:
        """The container's `grpc:` readiness and liveness probes must pass: SERVING."""
        for kind in ("readinessProbe", "livenessProbe"):
            grpc = (c.get(kind) or {}).get("grpc")
            if grpc is None:
                continue
            if grpc["port"] not in self.probe_ports[label]:
                self.failures.append(f"{label}: its {kind} probes port {grpc['port']}, which is not its probe port")
                return False
            ok, last, _ = self.grpc_probe(label, c, kind)
            if not ok:
                self.failures.append(f"{label}: its {kind} (grpc, service {grpc.get('service', '')!r}) never passed: {last}")
                return False
            print(f"    its {kind} passes: grpc.health.v1.Health/Check({grpc.get('service', '')!r}) on the probe port, "
                  "plain HTTP/2, answers SERVING")
        return True

    def stop_all(self) -> None:
        """SIGTERM in reverse start order; each must stop within its terminationGracePeriodSeconds."""
        for label, p, grace in reversed(self.procs):
            if p.poll() is not None:
                continue
            t0 = time.time()
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=grace)
                print(f"  {label}: stopped {time.time() - t0:.1f} s after SIGTERM (grace {grace} s), exit {p.returncode}")
                # Strata's binaries drain and exit 0; etcd shuts down, then re-raises the signal (-15).
                clean = {0} if "etcd" not in label else {0, -signal.SIGTERM}
                if p.returncode not in clean:
                    self.failures.append(f"{label}: exited {p.returncode} on SIGTERM")
            except subprocess.TimeoutExpired:
                self.failures.append(f"{label}: still running {grace} s after SIGTERM")

    def kill_all(self) -> None:
        for _, p, _ in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def strata_nodes(strata: str, port: int, admin: Path, want: list[str], failures: list[str]) -> None:
    """Waits until `strata nodes` (as an administrator, over mutual TLS) answers and lists `want`."""
    deadline, listing = time.time() + 30, ""
    while not failures:
        out = subprocess.run([strata, "nodes", "--endpoint", f"127.0.0.1:{port}", "--tls-dir", str(admin)],
                             capture_output=True, text=True, env={**os.environ, "STRATA_LOG": "off"})
        listing = (out.stdout + out.stderr).strip()
        if out.returncode == 0 and all(re.search(rf"\b{w}-[0-9a-f]{{6}}\b", listing) for w in want):
            print("  strata nodes, over mutual TLS as an administrator:")
            for line in listing.splitlines():
                print(f"    {line}")
            return
        if time.time() > deadline:
            failures.append(f"strata nodes did not answer{' with ' + ', '.join(want) if want else ''} within 30 s: {listing}")
            return
        time.sleep(0.5)


def http_ok(url: str, deadline: float) -> bool:
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


def store_outage(smoke: Smoke, cp: tuple[str, dict], restart_etcd) -> None:
    """With the replica's etcd stopped, its readiness probe must fail (strata.v1.Control NOT_SERVING) while its
    liveness probe passes (the server as a whole stays SERVING: the kubelet must not restart a replica that
    waits for its store); once etcd is back, readiness must pass again."""
    label, c = cp
    i = next(i for i, (lbl, _, _) in enumerate(smoke.procs) if lbl.startswith("StatefulSet/strata-etcd/"))
    _, p, grace = smoke.procs[i]
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        smoke.failures.append(f"etcd still running {grace} s after SIGTERM")
        return
    print("    etcd stopped:")
    ok, last, took = smoke.grpc_probe(label, c, "readinessProbe", want="NOT_SERVING", within=30)
    if not ok:
        smoke.failures.append(f"{label}: with etcd stopped, its readinessProbe still answered {last} after {took:.0f} s")
        return
    print(f"      its readinessProbe fails: strata.v1.Control answers NOT_SERVING ({took:.1f} s after etcd stopped)")
    ok, last, _ = smoke.grpc_probe(label, c, "livenessProbe", within=0)
    if not ok:
        smoke.failures.append(f"{label}: with etcd stopped, its livenessProbe answered {last}: the kubelet would restart it")
        return
    print("      its livenessProbe passes: the server as a whole answers SERVING (no restart while it waits for the store)")
    if not restart_etcd():
        return
    smoke.procs[i] = smoke.procs.pop()  # stopped in etcd's place, after the replica
    ok, last, took = smoke.grpc_probe(label, c, "readinessProbe", within=30)
    if not ok:
        smoke.failures.append(f"{label}: with etcd back, its readinessProbe still answered {last} after {took:.0f} s")
        return
    print(f"    etcd back: the replica's readinessProbe passes again ({took:.1f} s after etcd started)")


def main_smoke(args) -> int:
    need_modules()
    import base64
    import yaml

    kubectl = kubectl_path("KUBECTL", True)
    for b in (args.strata, args.agent):
        if not (b and os.access(b, os.X_OK)):
            fail_usage(f"--smoke needs --strata and --agent binaries, got {b!r}")
    etcd = shutil.which("etcd")
    if not etcd:
        fail_usage("--smoke needs etcd on PATH for production's store: run scripts/setup.sh (Debian's etcd-server)")
    args.strata, args.agent = os.path.abspath(args.strata), os.path.abspath(args.agent)
    tmp = Path(tempfile.mkdtemp(prefix="strata-k8s-smoke-"))
    smoke = Smoke(tmp, {}, {"strata/strata": args.strata, "strata/strata-edge-agent": args.agent})
    failures = smoke.failures
    try:
        out = subprocess.run([sys.executable, str(HERE / "make-secrets"), "--strata", args.strata, "--out", str(tmp / "secrets"), "--etcd"],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"make-secrets failed: {out.stdout}{out.stderr}")
        secret_docs = [d for d in yaml.safe_load_all((tmp / "secrets" / "secrets.yaml").read_text()) if d]
        smoke.secrets.update({d["metadata"]["name"]: {k: base64.b64decode(v) for k, v in d["data"].items()} for d in secret_docs})
        admin = tmp / "secrets" / "admin"

        print("dev: the control plane on its embedded store, an edge and a cloud agent")
        docs = render(kubectl, HERE / "overlays" / "dev")
        cp_port = free_port()
        to_cp = {r"\bstrata-control-plane:7400\b": f"127.0.0.1:{cp_port}"}
        order = sorted((d for d in docs if d["kind"] in WORKLOAD_KINDS), key=lambda d: role_of(d["spec"]["template"]["metadata"]["labels"]) != "control-plane")
        for w in order:
            is_cp = role_of(w["spec"]["template"]["metadata"]["labels"]) == "control-plane"
            if smoke.start(w, docs, cp_port if is_cp else free_port(), to_cp) is None:
                break
        strata_nodes(args.strata, cp_port, admin, ["edge-pool", "cloud-pool"], failures)
        smoke.stop_all()
        smoke.procs.clear()

        if not failures:
            print("production: etcd (one member, with the StatefulSet's flags and Secrets) and a control-plane replica on it")
            docs = render(kubectl, HERE / "overlays" / "production")
            etcd_set = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "strata-etcd")
            client, peer, metrics = free_port(), free_port(), free_port()
            member = r"strata-etcd-(\d)\.strata-etcd\.strata\.svc"
            etcd_map = {
                r"--initial-cluster=.*": f"--initial-cluster=strata-etcd-0=https://localhost:{peer}",
                rf"{member}:2379": f"localhost:{client}",
                rf"{member}:2380": f"localhost:{peer}",
                r":2379\b": f":{client}", r":2380\b": f":{peer}", r":2381\b": f":{metrics}",
            }
            if smoke.start(etcd_set, docs, client, etcd_map, binary=etcd):
                for kind in ("readinessProbe", "livenessProbe"):
                    probe = etcd_set["spec"]["template"]["spec"]["containers"][0][kind]["httpGet"]["path"]
                    if http_ok(f"http://127.0.0.1:{metrics}{probe}", time.time() + 20):
                        print(f"    its {kind} passes: GET {probe} on the metrics port answers 200")
                    else:
                        failures.append(f"etcd's {kind} GET {probe} never answered 200")
            if not failures:
                cp = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "strata-control-plane")
                cp_port = free_port()
                started = smoke.start(cp, docs, cp_port, {rf"{member}:2379": f"localhost:{client}"})
                if started:
                    strata_nodes(args.strata, cp_port, admin, [], failures)
                    log = (tmp / "strata-control-plane.log").read_text()
                    if smoke.procs and "on the etcd store" in log and "leading" in log:
                        print("    the replica is on the etcd store and leads")
                    elif not failures:
                        failures.append("the control plane did not report leading on the etcd store")
                if started and not failures:
                    store_outage(smoke, started, lambda: smoke.start(etcd_set, docs, client, etcd_map, binary=etcd))
        smoke.stop_all()
    except (RuntimeError, OSError, StopIteration) as e:
        failures.append(str(e) or type(e).__name__)
    finally:
        smoke.kill_all()
        if failures:
            for log in sorted(tmp.glob("*.log")):
                print(f"--- {log.name}\n{log.read_text()[-3000:]}")
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        for f in failures:
            print(f"FAIL smoke: {f}")
        return 1
    print("smoke passed: dev's and production's command lines run with the rendered arguments, Secrets and volumes")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--self-test", action="store_true", help="the check must catch testdata/'s planted violations")
    parser.add_argument("--smoke", action="store_true", help="run dev's command lines with real binaries on loopback")
    parser.add_argument("--strata", help="the strata binary (--smoke)")
    parser.add_argument("--agent", help="the strata-edge-agent binary (--smoke)")
    args = parser.parse_args()
    if args.self_test:
        return main_self_test(args)
    if args.smoke:
        return main_smoke(args)
    return main_check(args)


if __name__ == "__main__":
    sys.exit(main())
