#!/usr/bin/env python3
"""A real local run of the chart's wiring: the rendered pods become local processes.

  wiring.py --helm HELM --chart CHART --bin BINDIR --values wiring-values.yaml [--curve]

The chart is rendered with wiring-values.yaml (CPU backend, a tiny model made here with
`xcpipe model make-tiny`) and every Deployment/StatefulSet pod is started as local processes
with exactly the command, arguments and environment the chart gives its containers, in a clean
environment (nothing inherited but PATH). What a kubelet and the cluster would provide is
stood in for as follows, and nothing else is changed:

* Pods: pod i gets its own loopback address 127.0.0.(10 + i) as status.podIP, so every pod can
  bind the chart's ports as in a cluster. metadata.name is DEPLOYMENT-0 or STATEFULSET-K.
* Services: every Service DNS name (NAME, NAME.NS, NAME.NS.svc, NAME.NS.svc.cluster.local) in an
  env value, argument or command is replaced by the address of the pod its selector picks, and
  SERVICE-PORT by that pod's target port.
* Volumes: each volume mount's mountPath is replaced (as a path prefix) by a local directory:
  Secrets and ConfigMaps are written out from the rendered manifests (item paths, modes),
  hostPath is the host directory itself, emptyDir a fresh directory, a claim a directory per
  claim name.
* Environment: value, $(VAR) expansion (the Kubernetes rules), fieldRef (metadata.name,
  metadata.namespace, status.podIP), secretKeyRef/configMapKeyRef from the rendered objects.
* Start order: init containers run to completion first; StatefulSet pods start one by one
  (OrderedReady: the next after the previous passed its readiness probe) or, with the chart's
  Parallel policy, all at once in an adverse order (highest ordinal first, 0.3 s apart); the
  vision pod after the decoder pods and the coordinator 1.5 s after the workers, so that the
  roles cannot come from the start order; probes (httpGet, tcpSocket, exec) are run as a
  kubelet would, from the pod's address.
* Ports: the test picks free ports for the HTTP and cluster ports (values overrides), since
  the machine is shared.

Then: every startup/readiness probe passes, the coordinator's readiness (/ready through the
whole pipeline) passes, the roles are the chart's intent (vision on the vision pod, decoder pod
K = stage K), a request without a key gets 401, a text chat and an image chat request through the
HTTP Service get answers, a coordinator restart (SIGTERM, exit 0, a new process) leaves the
workers running and the new coordinator adopts them and answers, the batch Job (`xcpipe batch` with the chart's arguments, input from a
ConfigMap, output on a claim) writes a record with status 200 per request, and SIGTERM to every pod (what `helm uninstall` does) ends every
process with status 0 within the grace period. Everything is killed on any failure; bounded time.
"""
import argparse
import base64
import ctypes
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
import urllib.error
import urllib.request

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(os.path.dirname(HERE), "fixtures")
NS = "wiring"
RELEASE = "rel"
T0 = time.time()


class Fail(Exception):
    pass


def log(msg):
    print("[%5.1f s] %s" % (time.time() - T0, msg), flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def curve_keypair():
    """A CURVE keypair from libzmq itself (zmq_curve_keypair), Z85 text."""
    z = ctypes.CDLL("libzmq.so.5")
    pub, sec = ctypes.create_string_buffer(41), ctypes.create_string_buffer(41)
    if z.zmq_curve_keypair(pub, sec) != 0:
        raise Fail("zmq_curve_keypair failed (libzmq without CURVE?)")
    return pub.value.decode(), sec.value.decode()


def k8s_expand(s, env):
    """Kubernetes $(VAR) expansion: defined names are replaced, $$ is a literal $, the rest stays."""
    out, i = [], 0
    while i < len(s):
        if s.startswith("$$", i):
            out.append("$")
            i += 2
        elif s.startswith("$(", i):
            j = s.find(")", i)
            name = s[i + 2:j] if j > 0 else None
            if name is not None and name in env:
                out.append(env[name])
                i = j + 1
            else:
                out.append(s[i])
                i += 1
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


class Pod:
    def __init__(self, name, ip, spec, kind, owner, labels):
        self.name, self.ip, self.spec, self.kind, self.owner, self.labels = name, ip, spec, kind, owner, labels
        self.proc = None
        self.dir = None
        self.mounts = {}  # mountPath -> local dir, per container name
        self.env = None
        self.log = None


class Cluster:
    def __init__(self, docs, root, bindir, claims):
        self.docs, self.root, self.bindir, self.claims = docs, root, bindir, claims
        self.secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
        self.configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
        self.pods, self.dns = [], []
        self.procs = []
        ip = 10
        for d in docs:
            if d["kind"] in ("Deployment", "StatefulSet", "Job"):
                for k in range(d["spec"].get("replicas", 1)):
                    self.pods.append(Pod("%s-%d" % (d["metadata"]["name"], k), "127.0.0.%d" % ip,
                                         d["spec"]["template"]["spec"], d["kind"], d["metadata"]["name"],
                                         d["spec"]["template"]["metadata"]["labels"]))
                    ip += 1
        for d in docs:
            if d["kind"] != "Service":
                continue
            sel = d["spec"].get("selector", {})
            match = [p for p in self.pods if all(p.labels.get(k) == v for k, v in sel.items())]
            if not match:
                raise Fail("Service %s selects no pod" % d["metadata"]["name"])
            pod = match[0]
            n = d["metadata"]["name"]
            names = ["%s.%s.svc.cluster.local" % (n, NS), "%s.%s.svc" % (n, NS), "%s.%s" % (n, NS), n]
            ports = {}
            for p in d["spec"]["ports"]:
                ports[str(p["port"])] = str(self.target_port(pod, p.get("targetPort", p["port"])))
            self.dns.append((names, pod.ip, ports))
        # longest names first so that NAME does not eat NAME-cluster
        self.dns.sort(key=lambda x: -len(x[0][-1]))

    @staticmethod
    def target_port(pod, tp):
        if isinstance(tp, int):
            return tp
        for c in pod.spec["containers"]:
            for p in c.get("ports", []):
                if p.get("name") == tp:
                    return p["containerPort"]
        raise Fail("pod %s has no port named %s" % (pod.name, tp))

    def map_dns(self, s):
        for names, ip, ports in self.dns:
            for n in names:
                pat = r"(?<![\w.-])%s(?![\w.-])" % re.escape(n)
                for sp, tp in ports.items():  # NAME:PORT and NAME/PORT (bash /dev/tcp)
                    s = re.sub(pat + r"([:/])%s\b" % sp, lambda m: "%s%s%s" % (ip, m.group(1), tp), s)
                s = re.sub(pat, ip, s)
        return s

    def map_paths(self, s, mounts):
        if not mounts:
            return s
        # one pass (a replaced path must not be matched again), longest mount path first
        alt = "|".join(re.escape(mp) for mp in sorted(mounts, key=len, reverse=True))
        return re.sub(r"(?<![\w./-])(%s)(?=/|$|[\s\"':])" % alt, lambda m: mounts[m.group(1)], s)

    def volume_dirs(self, pod):
        """Materializes the pod's volumes; returns {volume name: local dir}."""
        out = {}
        for v in pod.spec.get("volumes", []):
            d = os.path.join(pod.dir, "vol", v["name"])
            if "secret" in v or "configMap" in v:
                src = v.get("secret") or v.get("configMap")
                objname = src.get("secretName") or src.get("name")
                obj = (self.secrets if "secret" in v else self.configmaps).get(objname)
                if obj is None:
                    raise Fail("pod %s: volume %s names %s, which the chart did not render" % (pod.name, v["name"], objname))
                if "secret" in v:
                    data = {k: base64.b64decode(x) for k, x in obj.get("data", {}).items()}
                    data.update({k: x.encode() for k, x in obj.get("stringData", {}).items()})
                else:
                    data = {k: x.encode() for k, x in obj.get("data", {}).items()}
                items = src.get("items") or [{"key": k, "path": k} for k in data]
                os.makedirs(d, exist_ok=True)
                for it in items:
                    if it["key"] not in data:
                        raise Fail("pod %s: %s has no key %s" % (pod.name, objname, it["key"]))
                    f = os.path.join(d, it["path"])
                    with open(f, "wb") as fh:
                        fh.write(data[it["key"]])
                    os.chmod(f, it.get("mode", src.get("defaultMode", 0o644)))
            elif "hostPath" in v:
                d = v["hostPath"]["path"]
                if not os.path.isdir(d):
                    raise Fail("hostPath %s is not a directory" % d)
            elif "emptyDir" in v:
                os.makedirs(d, exist_ok=True)
            elif "persistentVolumeClaim" in v:
                d = os.path.join(self.claims, v["persistentVolumeClaim"]["claimName"])
                os.makedirs(d, exist_ok=True)
            else:
                raise Fail("pod %s: volume %s: only secret, configMap, hostPath, emptyDir and claims are stood in for" % (pod.name, v["name"]))
            out[v["name"]] = d
        return out

    def container_env(self, pod, c, mounts):
        env = {}
        for e in c.get("env", []):
            if "value" in e:
                val = k8s_expand(str(e["value"]), env)
            else:
                vf = e["valueFrom"]
                if "fieldRef" in vf:
                    val = {"metadata.name": pod.name, "metadata.namespace": NS,
                           "status.podIP": pod.ip}[vf["fieldRef"]["fieldPath"]]
                elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
                    ref = vf.get("secretKeyRef") or vf.get("configMapKeyRef")
                    obj = (self.secrets if "secretKeyRef" in vf else self.configmaps)[ref["name"]]
                    raw = obj.get("data", {})[ref["key"]]
                    val = base64.b64decode(raw).decode() if "secretKeyRef" in vf else raw
                else:
                    raise Fail("unsupported valueFrom %s" % vf)
            env[e["name"]] = self.map_paths(self.map_dns(val), mounts)
        return env

    def argv(self, c, env, mounts):
        cmd = [k8s_expand(a, env) for a in c.get("command", [])] + [k8s_expand(a, env) for a in c.get("args", [])]
        cmd = [self.map_paths(self.map_dns(a), mounts) for a in cmd]
        if cmd[0].startswith("xcpipe"):
            exe = os.path.join(self.bindir, cmd[0])
            if not os.access(exe, os.X_OK):
                raise Fail("%s: not built" % exe)
            cmd[0] = exe
        elif cmd[0] != "bash":
            raise Fail("unexpected command %s" % cmd[0])
        return cmd

    def prepare(self, pod, c, vols):
        mounts = {m["mountPath"]: vols[m["name"]] for m in c.get("volumeMounts", [])}
        env = self.container_env(pod, c, mounts)
        base = {"PATH": "%s:/usr/local/bin:/usr/bin:/bin" % self.bindir}
        if c.get("volumeMounts") is not None and "/tmp" in mounts:
            base["TMPDIR"] = mounts["/tmp"]
        full = dict(base)
        full.update(env)
        return full, self.argv(c, env, mounts), mounts

    def spawn(self, pod, argv, env, logname):
        f = open(os.path.join(pod.dir, logname), "w")
        p = subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        self.procs.append((pod.name + "/" + logname, p))
        return p, f.name

    def start_pod(self, pod, tmp, init_timeout):
        pod.dir = os.path.join(tmp, "pods", pod.name)
        os.makedirs(pod.dir, exist_ok=True)
        vols = self.volume_dirs(pod)
        for ic in pod.spec.get("initContainers", []):
            env, argv, _ = self.prepare(pod, ic, vols)
            p, logf = self.spawn(pod, argv, env, "init-%s.log" % ic["name"])
            try:
                rc = p.wait(timeout=init_timeout)
            except subprocess.TimeoutExpired:
                raise Fail("pod %s: init container %s did not finish in %d s" % (pod.name, ic["name"], init_timeout))
            if rc != 0:
                raise Fail("pod %s: init container %s exited %d" % (pod.name, ic["name"], rc))
            log("pod %s: init container %s done" % (pod.name, ic["name"]))
        if len(pod.spec["containers"]) != 1:
            raise Fail("pod %s: one container per pod expected" % pod.name)
        c = pod.spec["containers"][0]
        pod.env, argv, pod.mounts = self.prepare(pod, c, vols)
        pod.proc, pod.log = self.spawn(pod, argv, pod.env, "main.log")
        log("pod %s (%s): started %s with %d variables" % (pod.name, pod.ip, os.path.basename(argv[0]), len(pod.env)))

    def probe_once(self, pod, pr):
        c = pod.spec["containers"][0]
        timeout = pr.get("timeoutSeconds", 1)
        try:
            if "httpGet" in pr:
                g = pr["httpGet"]
                port = self.target_port(pod, g["port"])
                req = urllib.request.Request("http://%s:%s%s" % (pod.ip, port, g.get("path", "/")))
                for h in g.get("httpHeaders", []):
                    req.add_header(h["name"], h["value"])
                with urllib.request.urlopen(req, timeout=timeout) as r:
                    return 200 <= r.status < 400
            if "tcpSocket" in pr:
                port = self.target_port(pod, pr["tcpSocket"]["port"])
                with socket.create_connection((pod.ip, port), timeout=timeout):
                    return True
            if "exec" in pr:
                argv = [self.map_paths(self.map_dns(a), pod.mounts) for a in pr["exec"]["command"]]
                r = subprocess.run(argv, env=pod.env, timeout=timeout, capture_output=True)
                return r.returncode == 0
        except (OSError, urllib.error.URLError, subprocess.TimeoutExpired):
            return False
        raise Fail("pod %s: unsupported probe %s" % (pod.name, pr))

    def wait_probe(self, pod, kind, limit):
        pr = pod.spec["containers"][0].get(kind)
        if pr is None:
            return
        end = time.time() + limit
        while True:
            if pod.proc.poll() is not None:
                raise Fail("pod %s exited (%d) while waiting for its %s" % (pod.name, pod.proc.returncode, kind))
            if self.probe_once(pod, pr):
                return
            if time.time() > end:
                raise Fail("pod %s: %s did not pass within %d s" % (pod.name, kind, limit))
            time.sleep(0.2)

    def stop_all(self, grace):
        """SIGTERM to every pod at once, then wait; returns {pod: exit status}."""
        for pod in self.pods:
            if pod.proc and pod.proc.poll() is None:
                pod.proc.send_signal(signal.SIGTERM)
        end = time.time() + grace
        rcs = {}
        for pod in self.pods:
            if pod.proc is None or pod.kind == "Job":
                continue
            try:
                rcs[pod.name] = pod.proc.wait(timeout=max(0.1, end - time.time()))
            except subprocess.TimeoutExpired:
                rcs[pod.name] = None
        return rcs

    def kill_all(self):
        for _, p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()


def http(url, body=None, key=None, timeout=60):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", "Bearer " + key)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def run(a):
    root = os.path.dirname(os.path.dirname(HERE))
    tmp = tempfile.mkdtemp(prefix="xc-helm-wiring-")
    cl = None
    try:
        models = os.path.join(tmp, "models")
        with open(a.values) as f:
            wv = yaml.safe_load(f)
        mdir = os.path.join(models, wv["model"]["dir"])
        r = subprocess.run([os.path.join(a.bin, "xcpipe"), "model", "make-tiny", "--out", mdir, "--layers", "2",
                            "--vocab", "1000", "--seed", "3", "--tokenizer",
                            os.path.join(FIXTURES, "tokenizer", "tiny.model")], capture_output=True, text=True)
        if r.returncode != 0:
            raise Fail("make-tiny: " + r.stderr)
        http_port, coord_port, worker_port = free_port(), free_port(), free_port()
        over = {"model": {"volume": {"hostPath": {"path": models, "type": "Directory"}}},
                "coordinator": {"http": {"port": http_port}},
                "cluster": {"coordinatorPort": coord_port, "workerPort": worker_port}}
        if a.curve:
            pub, sec = curve_keypair()
            over["cluster"]["curve"] = {"enabled": True, "publicKey": pub, "secretKey": sec}
        of = os.path.join(tmp, "override.yaml")
        with open(of, "w") as f:
            yaml.safe_dump(over, f)
        r = subprocess.run([a.helm, "template", RELEASE, a.chart, "--namespace", NS, "-f", a.values, "-f", of],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise Fail("helm template: " + r.stderr)
        docs = [d for d in yaml.safe_load_all(r.stdout) if d]
        # the batch Job's input: a ConfigMap the operator would create (kubectl create configmap)
        model = wv["coordinator"]["http"]["servedModelName"]
        lines = [json.dumps({"custom_id": "req-%d" % i, "method": "POST", "url": "/v1/chat/completions",
                             "body": {"model": model, "max_tokens": 4,
                                      "messages": [{"role": "user", "content": "Tell me %d things" % i}]}})
                 for i in range(3)]
        b = wv["batch"]
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": b["inputConfigMap"]},
                     "data": {b.get("inputFile", "requests.jsonl"): "\n".join(lines) + "\n"}})
        cl = Cluster(docs, root, a.bin, os.path.join(tmp, "claims"))
        log("rendered %d objects; pods: %s" % (len(docs), ", ".join("%s=%s" % (p.name, p.ip) for p in cl.pods)))

        # Pods start in an order a cluster may well choose, and the worst one for roles that
        # would follow registration order: the decoder pods first (highest ordinal first when
        # the StatefulSet starts them in parallel), then the vision pod, the coordinator 1.5 s
        # after the workers (workers retry their registration).
        def is_coord(p):
            return p.labels.get("app.kubernetes.io/component") == "coordinator"
        sts_pods = [p for p in cl.pods if p.kind == "StatefulSet"]
        sts_doc = next(d for d in docs if d["kind"] == "StatefulSet")
        if sts_doc["spec"].get("podManagementPolicy", "OrderedReady") == "Parallel":
            for pod in reversed(sts_pods):
                cl.start_pod(pod, tmp, a.timeout)
                time.sleep(0.3)
        else:
            for pod in sts_pods:
                cl.start_pod(pod, tmp, a.timeout)
                cl.wait_probe(pod, "startupProbe", a.timeout)
                cl.wait_probe(pod, "readinessProbe", a.timeout)
                log("pod %s ready" % pod.name)
        for pod in cl.pods:
            if pod.kind == "Deployment" and not is_coord(pod):
                cl.start_pod(pod, tmp, a.timeout)
        time.sleep(1.5)
        for pod in cl.pods:
            if is_coord(pod):
                cl.start_pod(pod, tmp, a.timeout)
        running = [p for p in cl.pods if p.kind != "Job"]
        for pod in running:
            cl.wait_probe(pod, "startupProbe", a.timeout)
            cl.wait_probe(pod, "livenessProbe", a.timeout)
        coord = next(p for p in cl.pods if p.labels.get("app.kubernetes.io/component") == "coordinator")
        cl.wait_probe(coord, "readinessProbe", a.timeout)
        log("coordinator ready (its readiness probe: /ready through the whole pipeline)")
        for pod in running:
            cl.wait_probe(pod, "readinessProbe", 10)

        # the roles the chart intends
        with open(coord.log) as f:
            clog = f.read()
        roles = dict(re.findall(r"assigned worker (\S+): (\w+ replica \d+ stage \d+)", clog))
        for pod in cl.pods:
            comp = pod.labels.get("app.kubernetes.io/component")
            if comp == "vision" and not roles.get(pod.name, "").startswith("vision"):
                raise Fail("pod %s got role %r, want vision" % (pod.name, roles.get(pod.name)))
            if comp == "decoder":
                k = int(pod.name.rsplit("-", 1)[1])
                want = "decoder replica 0 stage %d" % k
                if roles.get(pod.name) != want:
                    raise Fail("pod %s got role %r, want %r" % (pod.name, roles.get(pod.name), want))
        log("roles: " + "; ".join("%s: %s" % kv for kv in sorted(roles.items())))

        # requests through the HTTP Service, with the key from the chart's Secret
        svc = cl.map_dns("%s-xcpipe-coordinator:%d" % (RELEASE, http_port))
        keyfile = coord.env.get("XC_API_KEY_FILE")
        if not keyfile:
            raise Fail("the wiring values set API keys; the coordinator got no XC_API_KEY_FILE")
        with open(keyfile) as f:
            key = next(line.strip() for line in f if line.strip() and not line.startswith("#"))
        st, _ = http("http://%s/v1/models" % svc)
        if st != 401:
            raise Fail("GET /v1/models without a key: %d, want 401" % st)
        st, body = http("http://%s/v1/chat/completions" % svc,
                        {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8,
                         "temperature": 0}, key)  # greedy: a sampled stop token first flaked
        if st != 200 or body["choices"][0]["message"]["role"] != "assistant" or body["usage"]["completion_tokens"] < 1:
            raise Fail("text chat: %d %s" % (st, body))
        log("text chat: 200, %d completion tokens, finish_reason %s" %
            (body["usage"]["completion_tokens"], body["choices"][0]["finish_reason"]))
        with open(os.path.join(FIXTURES, "image", "src", "jpg_tiny_3x7.jpg"), "rb") as f:
            img = "data:image/jpeg;base64," + base64.b64encode(f.read()).decode()
        st, body = http("http://%s/v1/chat/completions" % svc,
                        {"model": model, "max_tokens": 6, "temperature": 0, "messages": [{"role": "user", "content": [
                            {"type": "image_url", "image_url": {"url": img}},
                            {"type": "text", "text": "What is in the picture?"}]}]}, key)
        if st != 200 or body["usage"]["completion_tokens"] < 1:
            raise Fail("image chat: %d %s" % (st, body))
        log("image chat: 200, %d prompt tokens (image included), %d completion tokens" %
            (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]))

        # a coordinator upgrade (Recreate: SIGTERM, then a new pod): it drains and exits 0, the
        # workers stay up (XC_SHUTDOWN_WORKERS=0) and the new coordinator adopts them
        workers = [p for p in running if p is not coord]
        coord.proc.send_signal(signal.SIGTERM)
        try:
            rc = coord.proc.wait(timeout=coord.spec.get("terminationGracePeriodSeconds", 30))
        except subprocess.TimeoutExpired:
            raise Fail("the coordinator did not exit on SIGTERM")
        if rc != 0:
            raise Fail("the coordinator exited %d on SIGTERM" % rc)
        time.sleep(1)
        gone = [p.name for p in workers if p.proc.poll() is not None]
        if gone:
            raise Fail("workers exited with the coordinator: %s" % gone)
        t_new = time.time()
        cl.start_pod(coord, tmp, a.timeout)
        cl.wait_probe(coord, "readinessProbe", a.timeout)
        gone = [p.name for p in workers if p.proc.poll() is not None]
        if gone:
            raise Fail("workers exited while the new coordinator adopted them: %s" % gone)
        st, body = http("http://%s/v1/chat/completions" % svc,
                        {"model": model, "messages": [{"role": "user", "content": "Hello again"}], "max_tokens": 4}, key)
        if st != 200:
            raise Fail("chat after the coordinator restart: %d %s" % (st, body))
        log("coordinator restarted (SIGTERM, new process): the workers stayed up, the new one was ready "
            "%.1f s after its start and answered" % (time.time() - t_new))

        if a.curve:
            # the cluster port admits only holders of the cluster key: a worker without CURVE
            # and one with CURVE but its own keypair never get to register
            coord_ep = coord.env["XC_COORD_ENDPOINT"]
            other_pub, other_sec = curve_keypair()
            intruders = {
                "intruder-plain": {},
                "intruder-key": {"XC_CURVE": "1", "XC_CURVE_SECRET_KEY": other_sec,
                                 "XC_CURVE_SERVER_KEY": open(os.path.join(
                                     coord.mounts["/etc/xcpipe/curve"], "curve-public-key")).read().strip()},
            }
            # control: the same process with the cluster's key files does register
            intruders["member-extra"] = {k: v for k, v in coord.env.items() if k.startswith("XC_CURVE")}
            ipods = []
            for n, extra in intruders.items():
                ip = Pod(n, "127.0.0.99", {}, "none", n, {})
                ip.dir = os.path.join(tmp, "pods", n)
                os.makedirs(ip.dir)
                env = {"PATH": "/usr/bin:/bin"}
                env.update(extra)
                ip.proc, ip.log = cl.spawn(ip, [os.path.join(a.bin, "xcpipe-worker"), "--coordinator", coord_ep,
                                                "--endpoint", "tcp://127.0.0.99:*", "--id", n,
                                                "--backend", "cpu", "--threads", "1"], env, "main.log")
                ipods.append(ip)
            time.sleep(3)
            with open(coord.log) as f:
                clog = f.read()
            for ip in ipods:
                joined = ("worker %s registered" % ip.name) in clog
                if joined != (ip.name == "member-extra"):
                    raise Fail("%s: registered=%s through CURVE" % (ip.name, joined))
                ip.proc.kill()
                ip.proc.wait()
            log("CURVE: workers without the cluster key were not let in (3 s); one with it was")

        # the batch Job: xcpipe batch against the HTTP Service, results on the claim
        job = next(p for p in cl.pods if p.kind == "Job")
        cl.start_pod(job, tmp, a.timeout)
        try:
            rc = job.proc.wait(timeout=a.timeout)
        except subprocess.TimeoutExpired:
            raise Fail("the batch Job did not finish in %d s" % a.timeout)
        if rc != 0:
            raise Fail("the batch Job exited %d" % rc)
        out = os.path.join(tmp, "claims", b["outputClaim"], b.get("outputFile", "results.jsonl"))
        with open(out) as f:
            recs = [json.loads(line) for line in f]
        ids = sorted(r["custom_id"] for r in recs)
        if ids != ["req-0", "req-1", "req-2"] or any(r["response"]["status_code"] != 200 for r in recs):
            raise Fail("batch results: %s" % recs)
        log("batch Job: exit 0, %d records with status 200 on the output claim" % len(recs))

        # helm uninstall: SIGTERM to every pod; the coordinator drains
        grace = max(p.spec.get("terminationGracePeriodSeconds", 30) for p in cl.pods)
        rcs = cl.stop_all(min(grace, 30))
        bad = {n: rc for n, rc in rcs.items() if rc != 0}
        if bad:
            raise Fail("exit status after SIGTERM (None = still running): %s" % bad)
        log("SIGTERM: every pod exited 0 (%s)" % ", ".join(sorted(rcs)))
        print("helm wiring%s: %d pods from the chart came up ready and answered chat requests" %
              (" (CURVE)" if a.curve else "", len(cl.pods)))
        return 0
    except (Fail, KeyError, StopIteration) as e:
        print("wiring.py: FAIL: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        if cl:
            for pod in cl.pods:
                if pod.dir:
                    for fn in sorted(os.listdir(pod.dir)):
                        if fn.endswith(".log"):
                            with open(os.path.join(pod.dir, fn)) as f:
                                lines = f.readlines()[-15:]
                            print("== %s/%s\n%s" % (pod.name, fn, "".join(lines)), file=sys.stderr)
        return 1
    finally:
        if cl:
            cl.kill_all()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--helm", required=True)
    ap.add_argument("--chart", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--values", required=True)
    ap.add_argument("--curve", action="store_true")
    ap.add_argument("--timeout", type=int, default=60, help="seconds per wait (probe, init container)")
    a = ap.parse_args()
    sys.exit(run(a))


if __name__ == "__main__":
    main()
