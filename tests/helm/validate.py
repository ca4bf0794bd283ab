#!/usr/bin/env python3
"""Renders the chart for a value set and validates every manifest offline.

  validate.py HELM CHART NAME [VALUES.yaml]

1. `helm template` (the values schema runs here too), then yamllint --strict on the output.
2. Every document against the Kubernetes JSON schemas of each release in KUBE_VERSIONS, strict
   (unknown fields are errors), with the kubernetes-validate package; the ServiceMonitor (a
   prometheus-operator CRD, not in those schemas) against the JSON schema of the
   cloudcoil-models-prometheus-operator model, made strict the same way.
3. The shape the value set asks for (pod counts, GPU requests, CURVE wiring, probes, ...).
4. A self-check that the validators reject a manifest with a misspelled field, so that a
   validator that accepts everything cannot pass this test.
Run by tests/helm/helm_test.sh under the venv of scripts/helm-tools.
"""
import copy
import os
import subprocess
import sys

import kubernetes_validate
import jsonschema
import yaml

KUBE_VERSIONS = ["1.27.0", "1.35.0"]  # the chart's oldest supported release and a recent one
HERE = os.path.dirname(os.path.abspath(__file__))


def fail(msg):
    print("validate.py: FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def render(helm, chart, values):
    cmd = [helm, "template", "rel", chart, "--namespace", "ns"]
    if values:
        cmd += ["-f", values]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        fail("helm template failed:\n" + r.stderr)
    return r.stdout


def yamllint(text):
    r = subprocess.run(["yamllint", "--strict", "-c", os.path.join(HERE, "yamllint.yaml"), "-"],
                       input=text, capture_output=True, text=True)
    if r.returncode != 0:
        fail("yamllint on the rendered manifests:\n" + r.stdout + r.stderr)


def strict_schema(schema):
    """Marks every object schema that lists properties as closed (additionalProperties false)."""
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        for v in schema.values():
            strict_schema(v)
    elif isinstance(schema, list):
        for v in schema:
            strict_schema(v)
    return schema


_sm_validator = None


def servicemonitor_validator():
    global _sm_validator
    if _sm_validator is None:
        from cloudcoil.models.prometheus_operator import v1 as pov1
        schema = strict_schema(pov1.ServiceMonitor.model_json_schema(by_alias=True))
        _sm_validator = jsonschema.Draft202012Validator(schema)
    return _sm_validator


def validate_doc(doc):
    """Returns a list of error strings for one manifest."""
    name = "%s/%s" % (doc.get("kind"), doc.get("metadata", {}).get("name"))
    if doc.get("apiVersion") == "monitoring.coreos.com/v1" and doc.get("kind") == "ServiceMonitor":
        errs = sorted(servicemonitor_validator().iter_errors(doc), key=lambda e: list(e.path))
        return ["%s: %s at %s" % (name, e.message, "/".join(map(str, e.path))) for e in errs]
    errors = []
    for v in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(doc, v, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append("%s (Kubernetes %s): %s at %s" %
                          (name, v, e.message, "/".join(map(str, e.path))))
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append("%s: no schema (%s)" % (name, e))
    return errors


def pod_spec(doc):
    return doc["spec"]["template"]["spec"]


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def check_shape(name, docs, values):
    """The rendered objects have the shape the value set asks for."""
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    stages = values.get("pipeline", {}).get("stages", 2)
    replicas = values.get("pipeline", {}).get("replicas", 1)
    vision = values.get("pipeline", {}).get("vision", True)
    backend = values.get("worker", {}).get("backend", "cuda")
    curve = values.get("cluster", {}).get("curve", {}).get("enabled", False)
    keys = bool(values.get("auth", {}).get("apiKeys") or values.get("auth", {}).get("existingSecret"))

    deps = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in by_kind["Deployment"]}
    sts = by_kind["StatefulSet"]
    if len(sts) != 1 or sts[0]["spec"]["replicas"] != stages * replicas:
        fail("%s: want one decoder StatefulSet of %d pods" % (name, stages * replicas))
    # roles come from XC_ROLE and the pod names, not from the start order: decoder pods start in
    # parallel and need no init container that waits for their turn
    if sts[0]["spec"]["podManagementPolicy"] != "Parallel" or pod_spec(sts[0]).get("initContainers"):
        fail("%s: decoder pods must start in parallel, without init containers" % name)
    if set(deps) != ({"coordinator", "vision"} if vision else {"coordinator"}):
        fail("%s: Deployments %s" % (name, sorted(deps)))
    coord = pod_spec(deps["coordinator"])["containers"][0]
    cenv = env_of(coord)
    want = {"XC_STAGES": str(stages), "XC_REPLICAS": str(replicas),
            "XC_WORKERS": str(stages * replicas + (1 if vision else 0))}
    for k, v in want.items():
        if cenv.get(k) != v:
            fail("%s: coordinator %s=%r, want %r" % (name, k, cenv.get(k), v))
    if coord["livenessProbe"]["httpGet"]["path"] != "/health":
        fail("%s: coordinator liveness must be /health" % name)
    rp = coord["readinessProbe"]
    if keys != ("exec" in rp) or ("/ready" not in (str(rp.get("exec")) + str(rp.get("httpGet")))):
        fail("%s: coordinator readiness must probe /ready (exec with the key file when keys are on)" % name)
    workers = [pod_spec(sts[0])] + ([pod_spec(deps["vision"])] if vision else [])
    for spec in workers + [pod_spec(deps["coordinator"])]:
        c = spec["containers"][0]
        env = env_of(c)
        if curve != (env.get("XC_CURVE") == "1"):
            fail("%s: %s: XC_CURVE=%r with curve.enabled=%s" % (name, c["name"], env.get("XC_CURVE"), curve))
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        if not mounts["model"].get("readOnly"):
            fail("%s: the model must be mounted read-only" % name)
        if not c["securityContext"]["readOnlyRootFilesystem"] or not spec["securityContext"]["runAsNonRoot"]:
            fail("%s: pods must run as non-root with a read-only root filesystem" % name)
    for spec in workers:
        c = spec["containers"][0]
        gpu = c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        if (backend == "cuda") != bool(gpu):
            fail("%s: worker backend %s with nvidia.com/gpu=%r" % (name, backend, gpu))
        if env_of(c).get("XC_BACKEND") != backend:
            fail("%s: XC_BACKEND" % name)
    roles = [env_of(spec["containers"][0]).get("XC_ROLE") for spec in workers]
    if roles != ["stage"] + (["vision"] if vision else []):
        fail("%s: XC_ROLE of the decoder and vision pods: %s" % (name, roles))
    anti = values.get("decoder", {}).get("podAntiAffinity", "soft")
    aff = pod_spec(sts[0]).get("affinity", {}).get("podAntiAffinity", {})
    if (anti == "hard") != ("requiredDuringSchedulingIgnoredDuringExecution" in aff):
        fail("%s: decoder podAntiAffinity %s not rendered" % (name, anti))
    pdbs = by_kind.get("PodDisruptionBudget", [])
    if len(pdbs) != 1 or pdbs[0]["spec"]["maxUnavailable"] != 1:
        fail("%s: want one PodDisruptionBudget with maxUnavailable 1" % name)
    nps = by_kind.get("NetworkPolicy", [])
    cl = [p for p in nps if p["metadata"]["name"].endswith("-cluster")]
    if len(cl) != 1:
        fail("%s: want the cluster NetworkPolicy" % name)
    rule = cl[0]["spec"]["ingress"][0]
    if not rule.get("from") or "podSelector" not in rule["from"][0] or len(rule["from"]) != 1:
        fail("%s: cluster ports must admit only the release's pods" % name)
    svc = {s["metadata"]["name"]: s for s in by_kind["Service"]}
    ccl = [s for n, s in svc.items() if n.endswith("-coordinator-cluster")]
    if len(ccl) != 1 or not ccl[0]["spec"].get("publishNotReadyAddresses"):
        fail("%s: the coordinator's cluster Service must publish the not-ready coordinator" % name)
    sm = values.get("serviceMonitor", {}).get("enabled", False)
    if sm != bool(by_kind.get("ServiceMonitor")):
        fail("%s: ServiceMonitor rendered=%s, enabled=%s" % (name, bool(by_kind.get("ServiceMonitor")), sm))
    if values.get("batch", {}).get("enabled", False):
        jobs = by_kind.get("Job", [])
        if len(jobs) != 1 or pod_spec(jobs[0])["containers"][0]["args"][0] != "batch":
            fail("%s: want one Job running xcpipe batch" % name)


def self_check(docs):
    """The validators must reject a misspelled field (or they prove nothing)."""
    dep = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    dep["spec"]["template"]["spec"]["containers"][0]["envv"] = []
    if not validate_doc(dep):
        fail("self-check: a Deployment with containers[0].envv passed the Kubernetes schema")
    dep = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    dep["spec"]["replicas"] = "one"
    if not validate_doc(dep):
        fail("self-check: a Deployment with replicas: \"one\" passed the Kubernetes schema")
    sm = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
          "metadata": {"name": "x"},
          "spec": {"selector": {}, "endpoints": [{"port": "http", "pathh": "/metrics"}]}}
    if not validate_doc(sm):
        fail("self-check: a ServiceMonitor with endpoints[0].pathh passed its schema")


def main():
    if len(sys.argv) not in (4, 5):
        fail("usage: validate.py HELM CHART NAME [VALUES.yaml]")
    helm, chart, name = sys.argv[1:4]
    vfile = sys.argv[4] if len(sys.argv) == 5 else None
    values = {}
    if vfile:
        with open(vfile) as f:
            values = yaml.safe_load(f) or {}
    text = render(helm, chart, vfile)
    yamllint(text)
    docs = [d for d in yaml.safe_load_all(text) if d]
    errors = []
    for d in docs:
        errors += validate_doc(d)
    if errors:
        fail("%s: schema errors:\n  %s" % (name, "\n  ".join(errors)))
    check_shape(name, docs, values)
    self_check(docs)
    kinds = sorted("%s/%s" % (d["kind"], d["metadata"]["name"]) for d in docs)
    print("%s: %d manifests valid against Kubernetes %s%s: %s" %
          (name, len(docs), " and ".join(KUBE_VERSIONS),
           " (+ ServiceMonitor CRD)" if any(d["kind"] == "ServiceMonitor" for d in docs) else "",
           ", ".join(kinds)))


if __name__ == "__main__":
    main()
