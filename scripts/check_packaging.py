#!/usr/bin/env python3
"""Checks of what users install RaftKit from: the Helm chart, the plain
manifests of the kubectl path, the CRD and the example RaftClusters.

Run by scripts/check-packaging.sh, which makes the virtual environment with
helm-python-sdk (Helm's own library), kubernetes-validate, checkov, PyYAML
and jsonschema. No cluster is needed. It:

- renders charts/raftkit-operator with Helm's library for the default values
  and a few overrides, checks what each rendering holds (least-privilege
  RBAC, a Role instead of a ClusterRole when one namespace is watched, the
  restricted security context, probes, the env the operator reads (its own
  pods' labels, which every RaftCluster's NetworkPolicy admits), the
  operator pods' NetworkPolicy and exactly whom it admits), lints
  the chart, and checks values.schema.json refuses bad values;
- validates every rendered object and every file in crds/, deploy/ and
  examples/ against the Kubernetes schemas, strictly (unknown fields fail);
  RaftCluster objects against the CRD's own openAPIV3Schema;
- runs checkov on the rendered chart, deploy/ and the Dockerfile (if there is
  one): any failed check not explained in CHECKOV_SKIPS below fails;
- checks the chart's CRD is crds/raftcluster.yaml and that deploy/ installs
  what the chart installs with its defaults.

Each check prints one line; the last line is "N passed, N failed".
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "raftkit-operator"
CRD_FILE = ROOT / "crds" / "raftcluster.yaml"
RELEASE = "raftkit-operator"
NAMESPACE = "raftkit-system"
OPERATOR_UID = 65532

# The oldest Kubernetes the chart supports (native sidecars: 1.29) and the
# newest kubernetes-validate knows.
KUBE_VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]

# Exactly what the operator may do (operator/src/backend/kube.rs, leader.rs):
# (api group, resource) -> verbs. More or fewer verbs fail the check.
WORKLOAD_RULES: dict[tuple[str, str], set[str]] = {
    ("raftkit.io", "raftclusters"): {"get", "list", "watch", "patch"},
    ("raftkit.io", "raftclusters/status"): {"get", "patch", "update"},
    ("apps", "statefulsets"): {"get", "list", "watch", "create", "patch", "update"},
    ("", "services"): {"get", "create", "patch", "update"},
    ("", "configmaps"): {"get", "create", "patch", "update"},
    # The TLS Secrets (operator/src/tls.rs), read by name and applied.
    ("", "secrets"): {"get", "create", "patch"},
    ("policy", "poddisruptionbudgets"): {"get", "create", "patch", "update"},
    # Each RaftCluster's NetworkPolicy (build::network_policy), applied;
    # deleted when spec.networkPolicy.enabled turns false.
    ("networking.k8s.io", "networkpolicies"): {"get", "create", "patch", "delete"},
    ("", "pods"): {"get", "list", "watch", "delete"},
    ("", "persistentvolumeclaims"): {"get", "list", "delete"},
    ("events.k8s.io", "events"): {"create", "patch"},
}
LEASE_RULES: dict[tuple[str, str], set[str]] = {
    ("coordination.k8s.io", "leases"): {"get", "create", "update"},
}

# Failed checkov checks we accept, each with why. A skip no longer needed
# fails too, so this table stays true.
#
# CKV2_K8S_6 (pods without a NetworkPolicy) passes: the chart gives the
# operator's pods one (metrics port only); RaftCluster pods get theirs from
# the operator (build::network_policy), not from a manifest checkov sees.
CHECKOV_SKIPS: dict[str, str] = {
    "CKV_K8S_43": "image by digest: raftkit:<version> is built from this "
    "repository and loaded into the cluster (kind load, a private registry); "
    "its digest is not known when the manifests are written",
    "CKV_K8S_15": "imagePullPolicy Always: release tags are never reused, "
    "and Always would break images loaded with `kind load` and air-gapped "
    "clusters; image.pullPolicy sets it",
    "CKV_K8S_38": "the operator talks to the API server, so its pods need "
    "their ServiceAccount token",
}
# The same for the Dockerfile (when there is one).
# The Dockerfile explains its own skips in `# checkov:skip=` comments
# (CKV_DOCKER_2: no HEALTHCHECK; CKV_DOCKER_7: the base is a build argument),
# so nothing is listed here; a check that fails without such a comment fails
# this test.
CHECKOV_DOCKERFILE_SKIPS: dict[str, str] = {}
# A deliberately insecure Deployment checkov must flag, so a checkov that
# silently checks nothing fails this test.
CHECKOV_CANARY = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: canary, namespace: canary}
spec:
  selector: {matchLabels: {app: canary}}
  template:
    metadata: {labels: {app: canary}}
    spec:
      containers:
        - name: canary
          image: canary:1
          securityContext: {privileged: true}
"""
CHECKOV_CANARY_MUST_FAIL = {"CKV_K8S_16"}  # privileged container


class Failed(Exception):
    """A check's finding."""


def ensure(cond: bool, message: str) -> None:
    if not cond:
        raise Failed(message)


# ---------------------------------------------------------------- loading


def load_docs(text: str, origin: str) -> list[dict[str, Any]]:
    """The non-empty YAML documents of `text`."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise Failed(f"{origin}: not YAML: {e}") from e
    for d in docs:
        ensure(isinstance(d, dict), f"{origin}: a document is not a mapping")
    return docs


def manifest_files(*dirs: str) -> list[Path]:
    files: list[Path] = []
    for d in dirs:
        files += sorted((ROOT / d).glob("*.yaml")) + sorted((ROOT / d).glob("*.yml"))
    return files


def ident(obj: dict[str, Any]) -> str:
    m = obj.get("metadata", {})
    ns = m.get("namespace")
    return f"{obj.get('kind')}/{(ns + '/') if ns else ''}{m.get('name')}"


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The chart's objects, rendered by Helm's library as `helm install`
    would (release raftkit-operator in raftkit-system)."""
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objs: list[dict[str, Any]] = []
    for path, text in sorted(out.items()):
        if path.endswith(".txt"):
            ensure(text.strip() != "", f"{path} renders empty")
            continue
        objs += load_docs(text, path)
    return objs


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o.get("kind") == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objs, kind)
    ensure(len(found) == 1, f"expected one {kind}, found {len(found)}")
    return found[0]


# ------------------------------------------------- Kubernetes schemas


def validate_k8s(obj: dict[str, Any], origin: str) -> None:
    """Strict validation against the Kubernetes API schemas of every
    version in KUBE_VERSIONS: unknown fields fail."""
    for v in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(obj, v, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path)
            raise Failed(f"{origin}: {ident(obj)} (Kubernetes {v}) at {path or '.'}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            raise Failed(f"{origin}: {ident(obj)}: no Kubernetes {v} schema: {e}")


def crd_to_jsonschema(s: dict[str, Any]) -> dict[str, Any]:
    """A structural openAPIV3Schema as JSON Schema, with the API server's
    rules: `nullable`, int-or-string, and unknown fields refused unless
    x-kubernetes-preserve-unknown-fields (kubectl's strict field validation)."""
    out: dict[str, Any] = {}
    for key in ("enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                "minLength", "maxLength", "pattern", "minItems", "maxItems",
                "uniqueItems", "required", "minProperties", "maxProperties"):
        if key in s:
            out[key] = s[key]
    if "type" in s:
        out["type"] = s["type"]
    if s.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if s.get("nullable") and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = types + ["null"]
        if "enum" in out:
            out["enum"] = out["enum"] + [None]
    if "properties" in s:
        out["properties"] = {k: crd_to_jsonschema(v) for k, v in s["properties"].items()}
    if isinstance(s.get("additionalProperties"), dict):
        out["additionalProperties"] = crd_to_jsonschema(s["additionalProperties"])
    elif s.get("type") == "object" and not s.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if "items" in s:
        out["items"] = crd_to_jsonschema(s["items"])
    return out


def crd_validator(crd: dict[str, Any]) -> tuple[str, str, jsonschema.Validator]:
    """(apiVersion, kind, validator) of the CRD's storage version."""
    spec = crd["spec"]
    version = next(v for v in spec["versions"] if v.get("storage"))
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    api_version = f"{spec['group']}/{version['name']}"
    schema.setdefault("properties", {}).update({
        "apiVersion": {"type": "string", "enum": [api_version]},
        "kind": {"type": "string", "enum": [spec["names"]["kind"]]},
        # Checked against ObjectMeta separately.
        "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    })
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
    js = crd_to_jsonschema(schema)
    jsonschema.Draft202012Validator.check_schema(js)
    return api_version, spec["names"]["kind"], jsonschema.Draft202012Validator(js)


def raftcluster_crd() -> dict[str, Any]:
    docs = load_docs(CRD_FILE.read_text(), str(CRD_FILE))
    ensure(len(docs) == 1, f"{CRD_FILE}: expected one CRD")
    return docs[0]


DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def validate_raftcluster(obj: dict[str, Any], origin: str,
                         validator: jsonschema.Validator) -> None:
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        path = "/".join(str(p) for p in e.path)
        raise Failed(f"{origin}: {ident(obj)} at {path or '.'}: {e.message}"
                     + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
    name = obj["metadata"].get("name", "")
    # The name becomes Service and pod names: a DNS label that starts with a letter.
    ensure(bool(DNS1035.match(name)) and len(name) <= 52,
           f"{origin}: name {name!r} is not a DNS-1035 label of at most 52 characters")
    # metadata against ObjectMeta, strictly.
    validate_k8s({"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]},
                 f"{origin} (metadata)")
    template = obj["spec"].get("template")
    if template is not None:
        validate_pod_template(template, f"{origin}: spec.template")


def validate_pod_template(template: dict[str, Any], origin: str) -> None:
    """The user's pod template (sidecar mode) as a PodTemplateSpec, and what
    the operator adds to it must fit: the pod runs as non-root, the node is
    the init container `raftkit-node` on port 8080."""
    validate_k8s({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                  "template": template}, origin)
    spec = template.get("spec", {})
    ensure(bool(spec.get("containers")), f"{origin}: no containers (the app)")
    pod_user = spec.get("securityContext", {}).get("runAsUser")
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        ensure(c["name"] != "raftkit-node",
               f"{origin}: container name raftkit-node is the operator's")
        user = c.get("securityContext", {}).get("runAsUser", pod_user)
        ensure(user is not None and user != 0,
               f"{origin}: container {c['name']} names no non-root runAsUser; the operator "
               "makes the pod runAsNonRoot, so an image that starts as root would not start")
        for p in c.get("ports", []):
            ensure(p.get("containerPort") != 8080,
                   f"{origin}: container {c['name']} takes port 8080, the node's")


def validate_any(obj: dict[str, Any], origin: str,
                 crd: tuple[str, str, jsonschema.Validator]) -> None:
    api_version, kind, validator = crd
    if obj.get("apiVersion") == api_version and obj.get("kind") == kind:
        validate_raftcluster(obj, origin, validator)
    else:
        validate_k8s(obj, origin)


# ------------------------------------------------------------ the chart


def deployment_container(objs: list[dict[str, Any]]) -> tuple[dict, dict]:
    dep = one(objs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    ensure(len(pod["containers"]) == 1, "the operator Deployment has one container")
    return dep, pod["containers"][0]


def rules_of(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for r in role.get("rules", []):
        ensure("resourceNames" not in r and "nonResourceURLs" not in r,
               f"{ident(role)}: unexpected rule {r}")
        for g in r["apiGroups"]:
            for res in r["resources"]:
                ensure("*" not in (g, res) and "*" not in r["verbs"],
                       f"{ident(role)}: wildcard in {r}")
                granted.setdefault((g, res), set()).update(r["verbs"])
    return granted


def check_rbac(objs: list[dict[str, Any]], watch_namespace: str) -> None:
    sa = one(objs, "ServiceAccount")["metadata"]
    roles = {(o["kind"], o["metadata"]["name"]): o for o in objs
             if o["kind"] in ("Role", "ClusterRole")}
    lease_roles = [o for o in by_kind(objs, "Role")
                   if o["metadata"].get("namespace") == NAMESPACE
                   and rules_of(o).keys() == LEASE_RULES.keys()]
    ensure(len(lease_roles) == 1, f"one lease Role in {NAMESPACE}, found {len(lease_roles)}")
    ensure(rules_of(lease_roles[0]) == LEASE_RULES,
           f"lease Role grants {rules_of(lease_roles[0])}, want {LEASE_RULES}")
    workload = [o for o in roles.values() if o is not lease_roles[0]]
    ensure(len(workload) == 1, f"one role for the RaftClusters' objects, found {len(workload)}")
    w = workload[0]
    if watch_namespace:
        ensure(w["kind"] == "Role" and w["metadata"].get("namespace") == watch_namespace,
               f"watchNamespace={watch_namespace}: want a Role in it, got {ident(w)}")
        ensure(not by_kind(objs, "ClusterRole") and not by_kind(objs, "ClusterRoleBinding"),
               "watchNamespace set, yet something cluster-wide is granted")
    else:
        ensure(w["kind"] == "ClusterRole", f"every namespace watched: want a ClusterRole, got {ident(w)}")
    granted = rules_of(w)
    ensure(granted == WORKLOAD_RULES,
           f"{ident(w)} grants differently from least privilege: "
           f"extra {sorted((k, sorted(v - WORKLOAD_RULES.get(k, set()))) for k, v in granted.items() if v - WORKLOAD_RULES.get(k, set()))}, "
           f"missing {sorted((k, sorted(v - granted.get(k, set()))) for k, v in WORKLOAD_RULES.items() if v - granted.get(k, set()))}")
    # Every role is bound to the operator's ServiceAccount, and only to it.
    bindings = by_kind(objs, "RoleBinding") + by_kind(objs, "ClusterRoleBinding")
    bound = set()
    for b in bindings:
        ref = b["roleRef"]
        ensure(all(s == {"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}
                   for s in b["subjects"]), f"{ident(b)} binds another subject: {b['subjects']}")
        role = roles.get((ref["kind"], ref["name"]))
        ensure(role is not None, f"{ident(b)} refers to a role the chart does not make: {ref}")
        if b["kind"] == "RoleBinding":
            ensure(b["metadata"]["namespace"] == role["metadata"].get("namespace",
                                                                      b["metadata"]["namespace"]),
                   f"{ident(b)} is not in its Role's namespace")
        bound.add((ref["kind"], ref["name"]))
    ensure(bound == set(roles), f"roles without a binding: {set(roles) - bound}")


def operator_env_names() -> set[str]:
    """The environment variables `raftkit-operator run` reads (its clap
    `env = "..."` attributes)."""
    text = (ROOT / "operator" / "src" / "main.rs").read_text()
    return set(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', text))


def check_deployment(objs: list[dict[str, Any]], values: dict[str, Any]) -> None:
    dep, c = deployment_container(objs)
    pod = dep["spec"]["template"]["spec"]
    ensure(dep["metadata"]["namespace"] == NAMESPACE, "Deployment not in the release namespace")
    ensure(dep["spec"]["replicas"] == values["replicas"],
           f"replicas {dep['spec']['replicas']}, values say {values['replicas']}")
    image = values["image"]
    ensure(c["image"] == f"{image['repository']}:{image['tag'] or '0.1.0'}", f"image {c['image']}")
    ensure(c["imagePullPolicy"] == image["pullPolicy"], "imagePullPolicy")
    ensure(c["command"] == ["raftkit-operator"] and c["args"][0] == "run",
           f"the container must run `raftkit-operator run`, runs {c.get('command')} {c.get('args')}")
    ensure(f"--lease-duration-secs={values['leaseDurationSecs']}" in c["args"], "lease duration flag")
    ensure("lease_duration_secs" in (ROOT / "operator/src/main.rs").read_text(),
           "the operator has no --lease-duration-secs flag any more")
    ensure(pod["serviceAccountName"] == one(objs, "ServiceAccount")["metadata"]["name"],
           "the pod runs under another ServiceAccount")
    env = {e["name"]: e for e in c["env"]}
    for name, path in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        ensure(env.get(name, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == path,
               f"{name} must come from the downward API ({path})")
    known = operator_env_names()
    for name in env:
        ensure(name in known or name == "RUST_LOG",
               f"env {name} is not read by raftkit-operator (it reads {sorted(known)})")
    ensure(env["RUST_LOG"]["value"] == values["logLevel"], "RUST_LOG is not logLevel")
    watched = env.get("RAFTKIT_OPERATOR_WATCH_NAMESPACE", {}).get("value", "")
    ensure(watched == values["watchNamespace"],
           f"watch namespace env {watched!r}, values say {values['watchNamespace']!r}")
    # The operator admits its own pods to every RaftCluster's node port by
    # these labels: they must be exactly the Deployment's selector, and with
    # the default release name the operator's built-in default (deploy/).
    pod_labels = env.get("RAFTKIT_OPERATOR_POD_LABELS", {}).get("value", "")
    parsed = dict(kv.split("=", 1) for kv in pod_labels.split(",") if "=" in kv)
    ensure(parsed == dep["spec"]["selector"]["matchLabels"],
           f"RAFTKIT_OPERATOR_POD_LABELS {pod_labels!r} is not the Deployment's selector "
           f"{dep['spec']['selector']['matchLabels']}")
    ensure(pod_labels == build_rs_const("DEFAULT_OPERATOR_POD_LABELS"),
           f"RAFTKIT_OPERATOR_POD_LABELS {pod_labels!r} differs from the operator's default "
           f"(operator/src/build.rs DEFAULT_OPERATOR_POD_LABELS)")
    port = values["metrics"]["port"]
    ensure(env["RAFTKIT_OPERATOR_METRICS_ADDR"]["value"] == f"0.0.0.0:{port}", "metrics address")
    ensure({"name": "metrics", "containerPort": port, "protocol": "TCP"} in c["ports"], "metrics port")
    for probe in ("livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        ensure(get["path"] == "/healthz" and get["port"] in ("metrics", port),
               f"{probe} must be GET /healthz on the metrics port, is {get}")
    ensure(c["resources"] == values["resources"], "resources are not the values'")
    ensure(set(c["resources"].get("limits", {})) >= {"cpu", "memory"}, "cpu and memory limits")
    # The restricted Pod Security Standard, wherever the fields are set.
    psc, sc = pod.get("securityContext", {}), c.get("securityContext", {})
    merged = {**psc, **sc}
    ensure(merged.get("runAsNonRoot") is True, "runAsNonRoot")
    ensure(merged.get("runAsUser") == OPERATOR_UID, f"runAsUser {merged.get('runAsUser')}")
    ensure(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation must be false")
    ensure(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
    ensure(sc.get("privileged", False) is False, "privileged")
    ensure(sc.get("capabilities", {}).get("drop") == ["ALL"] and not sc["capabilities"].get("add"),
           "capabilities must drop ALL and add none")
    ensure(merged.get("seccompProfile", {}).get("type") == "RuntimeDefault", "seccompProfile RuntimeDefault")
    ensure(not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"),
           "host namespaces")
    sel = dep["spec"]["selector"]["matchLabels"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    ensure(all(labels.get(k) == v for k, v in sel.items()), "the pods do not carry the selector's labels")


def check_service(objs: list[dict[str, Any]], values: dict[str, Any]) -> None:
    svcs = by_kind(objs, "Service")
    if not values["metrics"]["service"]["enabled"]:
        ensure(not svcs, "metrics.service.enabled=false, yet a Service is rendered")
        return
    ensure(len(svcs) == 1, f"one metrics Service, found {len(svcs)}")
    svc = svcs[0]
    dep = one(objs, "Deployment")
    ensure(svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"],
           "the metrics Service does not select the operator's pods")
    ensure(svc["spec"]["ports"][0]["targetPort"] == "metrics"
           and svc["spec"]["ports"][0]["port"] == values["metrics"]["service"]["port"],
           "the metrics Service's port")


def build_rs_const(name: str) -> str:
    """A constant of operator/src/build.rs (the operator's object builders),
    so the chart is checked against what the operator makes."""
    text = (ROOT / "operator" / "src" / "build.rs").read_text()
    m = re.search(rf"pub const {name}: [^=]+=\s*\"?([^\";]+)\"?;", text)
    ensure(m is not None, f"operator/src/build.rs has no constant {name}")
    return m.group(1)


def port_matches(entry: dict[str, Any], port: int, protocol: str) -> bool:
    if entry.get("protocol", "TCP") != protocol:
        return False
    if "port" not in entry:
        return True
    ensure(isinstance(entry["port"], int), f"a named port {entry['port']!r}: check by number")
    return entry["port"] <= port <= entry.get("endPort", entry["port"])


def admitted(policy: dict[str, Any], port: int, protocol: str = "TCP") -> list[dict] | None:
    """The peers `policy` admits to `port`: None for anyone, [] for no one."""
    peers: list[dict] = []
    for rule in policy["spec"].get("ingress", []):
        ports = rule.get("ports")
        if ports and not any(port_matches(p, port, protocol) for p in ports):
            continue
        if not rule.get("from"):
            return None
        peers += [p for p in rule["from"] if p not in peers]
    return peers


def canonical(peers: list[dict] | None) -> list[str] | None:
    return None if peers is None else sorted(json.dumps(p, sort_keys=True) for p in peers)


def check_network_policy(objs: list[dict[str, Any]], values: dict[str, Any]) -> None:
    """The operator's own pods: one policy in the release namespace selecting
    exactly them (the Deployment's selector), ingress only, admitting the
    metrics port from metricsNamespaces (anyone when none) and nothing else.
    RaftCluster pods are the operator's to guard (build::network_policy):
    no policy of the chart selects them."""
    policies = by_kind(objs, "NetworkPolicy")
    if not values["networkPolicy"]["enabled"]:
        ensure(not policies, f"networkPolicy.enabled=false, yet {[ident(p) for p in policies]} rendered")
        return
    ensure(len(policies) == 1, f"one NetworkPolicy expected, found {[ident(p) for p in policies]}")
    p = policies[0]
    spec, where = p["spec"], ident(p)
    ensure(p["metadata"]["namespace"] == NAMESPACE, f"{where} is not in {NAMESPACE}")
    operator_pods = {"matchLabels": one(objs, "Deployment")["spec"]["selector"]["matchLabels"]}
    ensure(spec["podSelector"] == operator_pods,
           f"{where} selects {spec['podSelector']}, not the operator's pods {operator_pods}")
    ensure(spec.get("policyTypes") == ["Ingress"] and "egress" not in spec,
           f"{where} must be about ingress only, has {spec.get('policyTypes')}")
    port = values["metrics"]["port"]
    listed = values["networkPolicy"].get("metricsNamespaces", [])
    expected = canonical([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}
                          for ns in listed] if listed else None)
    got = canonical(admitted(p, port))
    ensure(got == expected, f"{where} admits port {port} from {got if got is not None else 'anyone'}, "
           f"expected exactly {expected if expected is not None else 'anyone'}")
    for other, proto in [(1, "TCP"), (port - 1, "TCP"), (port + 1, "TCP"), (65535, "TCP"),
                         (53, "UDP"), (9000, "SCTP")]:
        got_other = admitted(p, other, proto)
        ensure(got_other == [], f"{where}: {proto} {other} admits {got_other if got_other is not None else 'anyone'}")


# Renderings checked: (name, values given to helm, what to expect).
SCENARIOS: list[tuple[str, dict[str, Any]]] = [
    ("defaults", {}),
    ("watchNamespace=apps", {"watchNamespace": "apps"}),
    ("replicas=1, metrics Service off, debug log, own image",
     {"replicas": 1, "metrics": {"service": {"enabled": False}}, "logLevel": "debug",
      "image": {"repository": "registry.example/raftkit", "tag": "0.1.0-rc1", "pullPolicy": "Always"}}),
    ("replicas=3, metrics port 9090, lease 30 s",
     {"replicas": 3, "metrics": {"port": 9090, "service": {"port": 9090}}, "leaseDurationSecs": 30}),
    ("metrics scraped from monitoring and team-a only",
     {"networkPolicy": {"metricsNamespaces": ["monitoring", "team-a"]}}),
    ("watchNamespace=apps, NetworkPolicy off",
     {"watchNamespace": "apps", "networkPolicy": {"enabled": False}}),
]


# --------------------------------------------------------------- checkov


def run_checkov(scan_dir: Path) -> list[dict[str, Any]]:
    """checkov's failed checks over `scan_dir` (Kubernetes manifests and a
    Dockerfile), as dicts."""
    cmd = [str(Path(sys.executable).parent / "checkov"), "-d", str(scan_dir),
           "--framework", "kubernetes", "dockerfile", "--skip-download", "--quiet",
           "-o", "json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    # Exit 1 means "failed checks", which we judge ourselves.
    ensure(p.returncode in (0, 1), f"checkov exited {p.returncode}: {p.stderr[-2000:]}")
    try:
        reports = json.loads(p.stdout)
    except json.JSONDecodeError as e:
        raise Failed(f"checkov printed no JSON ({e}): {p.stdout[:500]} {p.stderr[-2000:]}")
    if isinstance(reports, dict):
        reports = [reports]
    failed = []
    for r in reports:
        if "results" not in r:
            continue
        ensure(r["summary"].get("parsing_errors", 0) == 0,
               f"checkov could not parse {r['results'].get('parsing_errors')}")
        for c in r["results"]["failed_checks"]:
            failed.append({"id": c["check_id"], "name": c["check_name"],
                           "file": c["file_path"], "resource": c["resource"]})
    return failed


# ---------------------------------------------------------------- runner


class Run:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, name: str, fn: Callable[[], str | None]) -> None:
        start = time.monotonic()
        try:
            note = fn()
        except Failed as e:
            self.failed += 1
            print(f"FAIL {name}: {e}", flush=True)
            return
        except Exception:  # a bug or a library failure: show it whole
            self.failed += 1
            print(f"FAIL {name}: error\n{traceback.format_exc()}", flush=True)
            return
        self.passed += 1
        took = time.monotonic() - start
        print(f"ok   {name}{f' ({note})' if note else ''} [{took:.1f}s]", flush=True)


def main() -> int:
    started = time.monotonic()
    print(f"Helm library {helm.helm_sdk_version()} (helm-python-sdk {helm.__version__}), "
          f"kubernetes-validate schemas {', '.join(KUBE_VERSIONS)}, jsonschema {importlib.metadata.version('jsonschema')}, "
          f"checkov {importlib.metadata.version('checkov')}")
    run = Run()
    crd_obj = raftcluster_crd()
    crd = crd_validator(crd_obj)
    with helm.Chart.load(CHART) as chart:
        defaults = chart.values
        merged_values = {name: chart.merge_values(v) for name, v in SCENARIOS}
    rendered: dict[str, list[dict[str, Any]]] = {}

    def chart_crd_is_root_crd() -> str:
        chart_crd = CHART / "crds" / "raftcluster.yaml"
        ensure(chart_crd.read_bytes() == CRD_FILE.read_bytes(),
               f"{chart_crd.relative_to(ROOT)} differs from crds/raftcluster.yaml; "
               "copy it: cp crds/raftcluster.yaml charts/raftkit-operator/crds/")
        with helm.Chart.load(CHART) as chart:
            names = [c["filename"] for c in chart.crds]
        ensure(names == [f"{CHART.name}/crds/raftcluster.yaml"],
               f"Helm sees the chart's CRDs as {names}")
        return "identical bytes; Helm loads it as the chart's CRD"

    run.check("the chart's CRD is crds/raftcluster.yaml", chart_crd_is_root_crd)

    def values_schema() -> str:
        with helm.Chart.load(CHART) as chart:
            ensure(chart.schema is not None, "the chart has no values.schema.json")
            chart.validate_schema(defaults)
            bad = [{"replicas": 0}, {"replica": 2}, {"image": {"pullPolicy": "Sometimes"}},
                   {"watchNamespace": "Not_A_Namespace"}, {"leaseDurationSecs": 1},
                   {"metrics": {"service": {"enabled": "yes"}}},
                   {"networkPolicy": {"enabled": "yes"}},
                   {"networkPolicy": {"metricsNamespaces": ["Not_A_Namespace"]}},
                   {"networkPolicy": {"metricsNamespace": ["apps"]}},
                   # The RaftCluster pods' policy is the operator's now.
                   {"networkPolicy": {"allowedNamespaces": ["apps"]}},
                   {"networkPolicy": {"clusterNamespaces": ["b"]}}]
            for b in bad:
                try:
                    chart.validate_schema(chart.merge_values(b))
                except helm.HelmValuesError:
                    continue
                raise Failed(f"values.schema.json accepts {b}")
        return f"defaults pass; {len(bad)} bad values refused"

    run.check("values.schema.json", values_schema)

    for name, given in SCENARIOS:
        values = merged_values[name]

        def lint(given: dict[str, Any] = given) -> str:
            report = helm.lint(CHART, given or None, strict=True, namespace=NAMESPACE,
                               kube_version="v1.29.0")
            problems = [m for m in report["messages"] if m["severity"] >= 2] + [
                {"error": e} for e in report["errors"]]
            ensure(not problems, f"helm lint --strict: {problems}")
            infos = [m["error"] for m in report["messages"]]
            return f"info: {'; '.join(infos)}" if infos else "clean"

        def render_and_check(name: str = name, given: dict[str, Any] = given,
                             values: dict[str, Any] = values) -> str:
            objs = render(given or None)
            rendered[name] = objs
            check_deployment(objs, values)
            check_rbac(objs, values["watchNamespace"])
            check_service(objs, values)
            check_network_policy(objs, values)
            for o in objs:
                validate_k8s(o, f"chart ({name})")
            return f"{len(objs)} objects: " + ", ".join(sorted(ident(o) for o in objs))

        run.check(f"helm lint --strict ({name})", lint)
        run.check(f"chart renders ({name}), objects as expected, valid Kubernetes", render_and_check)

    def files_valid(d: str) -> Callable[[], str]:
        def check() -> str:
            files = manifest_files(d)
            ensure(bool(files), f"no manifests in {d}/")
            seen = []
            for f in files:
                for o in load_docs(f.read_text(), str(f.relative_to(ROOT))):
                    validate_any(o, str(f.relative_to(ROOT)), crd)
                    seen.append(f"{f.name}: {ident(o)}")
            return f"{len(seen)} objects: " + ", ".join(seen)
        return check

    for d in ("crds", "deploy", "examples"):
        run.check(f"{d}/ is valid Kubernetes (strict; RaftClusters against the CRD)", files_valid(d))

    def examples_cover() -> str:
        machines, sidecar, tls = set(), False, False
        for f in manifest_files("examples"):
            for o in load_docs(f.read_text(), f.name):
                if o.get("kind") == "RaftCluster":
                    machines.add(o["spec"].get("stateMachine", "counter"))
                    sidecar |= "template" in o["spec"]
                    tls |= o["spec"].get("tls", {}).get("enabled", False) is True
        ensure(machines == {"counter", "kv"}, f"examples cover state machines {machines}")
        ensure(sidecar, "no example runs the node as a sidecar (spec.template)")
        ensure(tls, "no example turns on mutual TLS (spec.tls.enabled)")
        ensure((ROOT / "examples" / "raftcluster.yaml").exists(), "examples/raftcluster.yaml is gone")
        return "counter, kv, a sidecar and a TLS example"

    run.check("examples cover counter, kv, sidecar mode and TLS", examples_cover)

    def validators_bite() -> str:
        # The same validators must refuse broken inputs, or the checks above
        # prove nothing.
        example = load_docs((ROOT / "examples" / "raftcluster.yaml").read_text(), "example")[0]
        broken = {
            "replicas 10 (maximum 9)": ("spec", "replicas", 10),
            "replicas missing (required)": ("spec", "replicas", None),
            "stateMachine sql (enum)": ("spec", "stateMachine", "sql"),
            "unknown field spec.replica": ("spec", "replica", 3),
            "electionTimeoutMs 50 (minimum 100)": ("raft", "electionTimeoutMs", 50),
            "readMode sometimes (enum)": ("raft", "readMode", "sometimes"),
            "unknown field spec.raft.tick": ("raft", "tick", 1),
            "name Demo (not a DNS label)": ("metadata", "name", "Demo"),
            "unknown field spec.tls.secretNam": ("tls", "secretNam", "mine"),
            "tls.enabled 'yes' (boolean)": ("tls", "enabled", "yes"),
            "tls.secretName '' (minLength 1)": ("tls", "secretName", ""),
        }
        for what, (where, key, value) in broken.items():
            o = copy.deepcopy(example)
            target = {"spec": o["spec"], "raft": o["spec"].setdefault("raft", {}),
                      "tls": o["spec"].setdefault("tls", {"enabled": True}),
                      "metadata": o["metadata"]}[where]
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
            try:
                validate_any(o, "broken example", crd)
            except Failed:
                continue
            raise Failed(f"a RaftCluster with {what} passes")
        sidecar = {"spec": {"containers": [{"name": "app", "image": "busybox:1.37"}]}}
        try:
            validate_pod_template(sidecar, "root app")
            raise Failed("an app container that runs as root passes")
        except Failed as e:
            ensure("runAsUser" in str(e), str(e))
        ensure("defaults" in rendered, "the chart did not render with its defaults")
        dep = copy.deepcopy(one(rendered["defaults"], "Deployment"))
        dep["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
        try:
            validate_k8s(dep, "broken Deployment")
            raise Failed("kubernetes-validate accepts an unknown field (securityContex)")
        except Failed as e:
            ensure("securityContex" in str(e), str(e))
        return f"{len(broken) + 2} broken inputs refused"

    run.check("the validators refuse broken inputs", validators_bite)

    def network_policy_check_bites() -> str:
        # check_network_policy must refuse a policy that admits too much or
        # too little, each for its own reason, or its passes above prove
        # nothing. Two renderings: metrics from anyone (the defaults) and
        # from listed namespaces.
        anyone, listed, off = SCENARIOS[0][0], SCENARIOS[4][0], SCENARIOS[5][0]
        for name in (anyone, listed):
            ensure(name in rendered and by_kind(rendered[name], "NetworkPolicy"),
                   f"scenario {name!r} rendered no NetworkPolicy")

        def metrics_rule(p: dict) -> dict:
            return p["spec"]["ingress"][0]

        def add_rule(rule: dict) -> Callable[[dict], None]:
            return lambda p: p["spec"]["ingress"].append(rule)

        # what -> (scenario, mutation, words the refusal must hold)
        broken: dict[str, tuple[str, Callable[[dict], Any], str]] = {
            "metrics from every namespace": (
                listed, lambda p: metrics_rule(p)["from"].append({"namespaceSelector": {}}), "admits port"),
            "metrics from anyone (no from)": (listed, lambda p: metrics_rule(p).pop("from"), "from anyone"),
            "a listed namespace dropped": (listed, lambda p: metrics_rule(p)["from"].pop(), "admits port"),
            "the metrics port moved": (
                anyone, lambda p: metrics_rule(p)["ports"][0].update(port=9999), "admits port 8080 from []"),
            "every pod of the namespace selected": (
                anyone, lambda p: p["spec"].update(podSelector={}), "not the operator's pods"),
            "RaftCluster pods selected": (
                anyone, lambda p: p["spec"].update(podSelector={"matchExpressions": [
                    {"key": build_rs_const("CLUSTER_LABEL"), "operator": "Exists"}]}),
                "not the operator's pods"),
            "egress too": (
                anyone, lambda p: p["spec"].update(policyTypes=["Ingress", "Egress"]), "ingress only"),
            "UDP 53 open": (anyone, add_rule({"ports": [{"protocol": "UDP", "port": 53}]}), "UDP 53 admits"),
            "every port open": (
                anyone, add_rule({"ports": [{"protocol": "TCP", "port": 1, "endPort": 65535}]}),
                "TCP 1 admits anyone"),
        }
        for what, (name, mutate, words) in broken.items():
            bad = copy.deepcopy(rendered[name])
            mutate(by_kind(bad, "NetworkPolicy")[0])
            try:
                check_network_policy(bad, merged_values[name])
            except Failed as e:
                ensure(words in str(e), f"a NetworkPolicy with {what} is refused for another "
                       f"reason than expected ({words!r}): {e}")
                continue
            raise Failed(f"a NetworkPolicy with {what} passes")
        try:
            check_network_policy([o for o in rendered[anyone] if o["kind"] != "NetworkPolicy"],
                                 merged_values[anyone])
            raise Failed("a missing NetworkPolicy passes")
        except Failed as e:
            ensure("one NetworkPolicy expected" in str(e), str(e))
        try:
            check_network_policy(rendered[off] + by_kind(rendered[anyone], "NetworkPolicy"),
                                 merged_values[off])
            raise Failed("a NetworkPolicy rendered with networkPolicy.enabled=false passes")
        except Failed as e:
            ensure("enabled=false" in str(e), str(e))
        # The labels the operator admits as its own pods must be the
        # Deployment's selector.
        bad = copy.deepcopy(rendered[anyone])
        c = one(bad, "Deployment")["spec"]["template"]["spec"]["containers"][0]
        for e in c["env"]:
            if e["name"] == "RAFTKIT_OPERATOR_POD_LABELS":
                e["value"] = "app.kubernetes.io/name=raftkit-operator"
        try:
            check_deployment(bad, merged_values[anyone])
            raise Failed("RAFTKIT_OPERATOR_POD_LABELS other than the Deployment's selector passes")
        except Failed as e:
            ensure("is not the Deployment's selector" in str(e), str(e))
        return f"{len(broken) + 3} broken policies and operator pod labels refused, each for its reason"

    run.check("the NetworkPolicy checks refuse broken policies", network_policy_check_bites)

    def deploy_is_chart_defaults() -> str:
        # deploy/ is hand-written for reading; it must install what
        # `helm install raftkit-operator charts/raftkit-operator -n
        # raftkit-system` does, less Helm's own labels, plus the Namespace.
        helm_labels = {"helm.sh/chart", "app.kubernetes.io/managed-by"}

        def strip(o: dict[str, Any]) -> dict[str, Any]:
            o = copy.deepcopy(o)
            for meta in (o.get("metadata", {}),
                         o.get("spec", {}).get("template", {}).get("metadata", {})):
                for k in helm_labels:
                    meta.get("labels", {}).pop(k, None)
            return o

        chart_objs = {ident(o): strip(o) for o in rendered["defaults"]}
        plain = {}
        for f in manifest_files("deploy"):
            for o in load_docs(f.read_text(), f.name):
                plain[ident(o)] = o
        ensure(set(plain) - set(chart_objs) == {f"Namespace/{NAMESPACE}"},
               f"deploy/ has objects the chart does not: {sorted(set(plain) - set(chart_objs))}")
        ensure(set(chart_objs) <= set(plain),
               f"deploy/ lacks objects of the chart: {sorted(set(chart_objs) - set(plain))}")
        for k, o in chart_objs.items():
            ensure(plain[k] == o, f"deploy/ and the chart differ on {k}:\n"
                   f"deploy: {json.dumps(plain[k], sort_keys=True)}\n"
                   f"chart:  {json.dumps(o, sort_keys=True)}")
        return f"{len(chart_objs)} objects agree"

    if "defaults" in rendered:
        run.check("deploy/ installs what the chart installs with its defaults",
                  deploy_is_chart_defaults)

    def checkov() -> str:
        with tempfile.TemporaryDirectory(prefix="raftkit-checkov-") as tmp:
            scan = Path(tmp)
            for name, objs in rendered.items():
                d = scan / "chart" / re.sub(r"[^a-z0-9]+", "-", name.lower())
                d.mkdir(parents=True)
                (d / "rendered.yaml").write_text(yaml.safe_dump_all(objs, sort_keys=False))
            (scan / "deploy").mkdir()
            for f in manifest_files("deploy"):
                (scan / "deploy" / f.name).write_text(f.read_text())
            dockerfile = ROOT / "Dockerfile"
            if dockerfile.exists():
                (scan / "docker").mkdir()
                (scan / "docker" / "Dockerfile").write_text(dockerfile.read_text())
            (scan / "canary").mkdir()
            (scan / "canary" / "canary.yaml").write_text(CHECKOV_CANARY)
            failed = run_checkov(scan)
        canary = {c["id"] for c in failed if c["file"].startswith("/canary/")}
        ensure(CHECKOV_CANARY_MUST_FAIL <= canary,
               f"checkov did not flag the privileged canary ({sorted(canary)})")
        ours = [c for c in failed if not c["file"].startswith("/canary/")]
        skips = dict(CHECKOV_SKIPS)
        if dockerfile.exists():
            skips.update(CHECKOV_DOCKERFILE_SKIPS)
        unexplained = [c for c in ours if c["id"] not in skips]
        ensure(not unexplained, "checkov failed checks with no reason in CHECKOV_SKIPS "
               "(scripts/check_packaging.py):\n" + "\n".join(
                   f"  {c['id']} {c['name']}: {c['file']} {c['resource']}" for c in unexplained))
        stale = set(skips) - {c["id"] for c in ours}
        ensure(not stale, f"CHECKOV_SKIPS explains checks that no longer fail: {sorted(stale)}")
        for cid in sorted({c["id"] for c in ours}):
            print(f"     accepted {cid}: {skips[cid]}")
        return (f"chart ({len(rendered)} renderings), deploy/"
                f"{', Dockerfile' if dockerfile.exists() else ' (no Dockerfile yet)'}; "
                f"{len(ours)} accepted findings of {len({c['id'] for c in ours})} kinds")

    run.check("checkov: no unexplained failed check", checkov)

    print(f"checks took {time.monotonic() - started:.1f}s")
    print(f"packaging: {run.passed} passed, {run.failed} failed")
    return 1 if run.failed else 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
