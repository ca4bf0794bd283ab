#!/usr/bin/env python3
"""The chart sets nothing the binaries do not read.

  env_check.py HELM CHART BINDIR PROTOCOL_MD NAME [VALUES.yaml]

Renders the chart and, for every container that runs an xcpipe binary, compares what the chart
gives it with what that binary documents in its own --help ("--flag ... [env XC_NAME]"):
* every XC_* environment variable is read by that binary (its --help), or is a CURVE variable
  of docs/protocol.md (read by the ZeroMQ transport inside every cluster process);
* every --flag in the arguments is one of the binary's flags;
* any other variable (POD_NAME, POD_IP) exists only to be expanded as $(NAME) into XC_* values.
With the default values it also checks docs/deploy.md: every leaf key of values.yaml has a row in
its values table, and every XC_* variable that table names is one a binary reads.
"""
import os
import re
import subprocess
import sys

import yaml

HELP_ENV = re.compile(r"\[env (XC_[A-Z0-9_]+)\]")
HELP_FLAG = re.compile(r"^\s+(--[a-z0-9-]+)", re.M)
_help_cache = {}


def fail(msg):
    print("env_check.py: FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def binary_help(bindir, argv0, sub):
    key = (argv0, sub)
    if key not in _help_cache:
        exe = os.path.join(bindir, argv0)
        if not os.access(exe, os.X_OK):
            fail("%s: no such binary (build it first)" % exe)
        cmd = [exe] + ([sub] if sub else []) + ["--help"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        text = r.stdout + r.stderr
        envs, flags = set(HELP_ENV.findall(text)), set(HELP_FLAG.findall(text))
        if r.returncode != 0 or not envs:
            fail("%s: --help gave rc %d and no [env XC_*] entries:\n%s" % (" ".join(cmd), r.returncode, text))
        _help_cache[key] = (envs, flags)
    return _help_cache[key]


def curve_vars(protocol_md):
    with open(protocol_md) as f:
        text = f.read()
    names = set(re.findall(r"`(XC_CURVE[A-Z_]*)`", text))
    if "XC_CURVE_SECRET_KEY_FILE" not in names:
        fail("%s: no CURVE variable table" % protocol_md)
    return names


def leaf_keys(d, prefix=""):
    out = []
    for k, v in d.items():
        p = prefix + k
        if isinstance(v, dict) and v and k not in ("resources", "nodeSelector", "affinity",
                                                     "podAnnotations", "annotations", "labels", "volume"):
            out += leaf_keys(v, p + ".")
        else:
            out.append(p)
    return out


def check_docs(chart, root, readable):
    with open(os.path.join(chart, "values.yaml")) as f:
        values = yaml.safe_load(f)
    with open(os.path.join(root, "docs", "deploy.md")) as f:
        doc = f.read()
    rows = {}
    for line in doc.splitlines():
        m = re.match(r"^\|\s*`([A-Za-z0-9_.]+)`\s*\|(.*)$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    missing = [k for k in leaf_keys(values) if k not in rows]
    if missing:
        fail("docs/deploy.md has no row for values key(s): " + ", ".join(missing))
    unknown = set()
    for k, rest in rows.items():
        for v in re.findall(r"XC_[A-Z0-9_]+", rest):
            if v not in readable:
                unknown.add("%s -> %s" % (k, v))
    if unknown:
        fail("docs/deploy.md names variables no binary reads: " + ", ".join(sorted(unknown)))
    print("docs/deploy.md: all %d values keys documented" % len(leaf_keys(values)))


def main():
    helm, chart, bindir, protocol_md, name = sys.argv[1:6]
    vfile = sys.argv[6] if len(sys.argv) > 6 else None
    cmd = [helm, "template", "rel", chart] + (["-f", vfile] if vfile else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        fail("helm template: " + r.stderr)
    curve = curve_vars(protocol_md)
    checked = 0
    for doc in yaml.safe_load_all(r.stdout):
        if not doc or doc["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        spec = doc["spec"]["template"]["spec"]
        for c in spec["containers"]:
            argv0 = os.path.basename(c["command"][0])
            args = c.get("args", [])
            sub = None
            if argv0 == "xcpipe":
                sub, args = args[0], args[1:]
            envs, flags = binary_help(bindir, argv0, sub)
            where = "%s %s/%s container %s (%s%s)" % (name, doc["kind"], doc["metadata"]["name"], c["name"],
                                                      argv0, " " + sub if sub else "")
            env = c.get("env", [])
            values = " ".join(str(e.get("value", "")) for e in env)
            for e in env:
                n = e["name"]
                if n.startswith("XC_"):
                    if n not in envs and n not in curve:
                        fail("%s sets %s, which %s does not read" % (where, n, argv0))
                elif "$(%s)" % n not in values:
                    fail("%s sets %s, which is neither an XC_* variable nor expanded into one" % (where, n))
            for a in args:
                if a.startswith("--") and a.split("=")[0] not in flags:
                    fail("%s passes %s, which is not a flag of %s" % (where, a, argv0))
            checked += 1
            print("%s: %d variables, %d arguments: all read by the binary" % (where, len(env), len(args)))
    if checked == 0:
        fail("%s: no containers found" % name)
    if name == "default":
        readable = set(curve)
        for (a, s) in [("xcpipe-coordinator", None), ("xcpipe-worker", None)]:
            readable |= binary_help(bindir, a, s)[0]
        for envs, _ in _help_cache.values():
            readable |= envs
        check_docs(chart, os.path.dirname(os.path.dirname(os.path.abspath(chart))), readable)


if __name__ == "__main__":
    main()
