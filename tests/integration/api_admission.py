#!/usr/bin/env python3
"""Admission before work (issue 12.5), against a running coordinator.

usage: api_admission.py URL KEY COORD_PID MAX_BODY_BYTES N_UNAUTH N_CONCURRENT IMAGE_FILE
                        MAX_PIXELS PREPROCESS_SLOTS

1. N_UNAUTH requests declaring a MAX_BODY-sized (32 MiB at most) body without a valid key: each
   is answered 401 after the headers alone (this client sends no body byte), and the
   coordinator's RSS stays within 5 MB.
2. A declared body over the limit is answered 413 before any byte is sent; a POST to an unknown
   path with a body is 404, a chunked body over the limit 413.
3. N_CONCURRENT maximal authenticated bodies (an image data URL padded to the body limit) at
   once: every answer is 200 / 400 / 429 / 503 (never a dropped connection), and the peak RSS
   (VmHWM) is printed next to the bound of docs/api.md.
Prints one line of figures per part.
"""
import base64
import json
import socket
import sys
import threading
import time
from urllib.parse import urlparse

url, key, pid, max_body, n_unauth, n_conc, image, max_px, slots = sys.argv[1:10]
pid, max_body, n_unauth, n_conc = int(pid), int(max_body), int(n_unauth), int(n_conc)
max_px, slots = int(max_px), int(slots)
u = urlparse(url)
HOST, PORT = u.hostname, u.port


def rss_kb(field="VmRSS"):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise SystemExit(f"no {field} for pid {pid}")


def head(path, length, auth, extra=""):
    h = f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
    if auth:
        h += f"Authorization: Bearer {auth}\r\n"
    if length is not None:
        h += f"Content-Length: {length}\r\n"
    return (h + extra + "\r\n").encode()


def status_of(sock, timeout=30):
    sock.settimeout(timeout)
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    if not data.startswith(b"HTTP/1."):
        return 0
    return int(data.split()[1])


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


# 1. unauthenticated uploads: answered from the headers, nothing sent
decl = 32 << 20
r0 = rss_kb()
t0 = time.time()
for i in range(n_unauth):
    s = socket.create_connection((HOST, PORT))
    s.sendall(head("/v1/chat/completions", decl, "wrong-key" if i % 2 else None))
    st = status_of(s)
    s.close()
    if st != 401:
        fail(f"unauthenticated upload {i}: status {st}, want 401 before the body")
time.sleep(0.3)
r1 = rss_kb()
print(f"unauthenticated: {n_unauth} x {decl >> 20} MiB declared, all 401 with 0 body bytes sent, "
      f"{time.time() - t0:.2f} s, RSS {r0} -> {r1} kB (delta {r1 - r0} kB)")
if r1 - r0 > 5000:
    fail(f"RSS grew by {r1 - r0} kB over {n_unauth} refused uploads")

# 2. too large, unknown path, chunked
s = socket.create_connection((HOST, PORT))
s.sendall(head("/v1/chat/completions", max_body + 1, key))
st = status_of(s)
s.close()
if st != 413:
    fail(f"declared {max_body + 1} bytes: status {st}, want 413 before the body")
body = b'{"x":' + b"1" * 1000 + b"}"
s = socket.create_connection((HOST, PORT))
s.sendall(head("/v1/nothing", len(body), key) + body)
st = status_of(s)
s.close()
if st != 404:
    fail(f"POST /v1/nothing: status {st}, want 404")
s = socket.create_connection((HOST, PORT))
s.sendall(head("/v1/chat/completions", None, key, "Transfer-Encoding: chunked\r\n"))
chunk = b"x" * 65536
try:
    for _ in range(max_body // len(chunk) + 2):
        s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
    s.sendall(b"0\r\n\r\n")
except OSError:
    pass  # the server may answer and close early
st = status_of(s)
s.close()
if st != 413:
    fail(f"chunked body over the limit: status {st}, want 413")
print("limits: declared over the limit 413 before the body, POST to an unknown path 404, "
      "chunked over the limit 413")

# 3. concurrent maximal authenticated bodies
raw = open(image, "rb").read()
b64 = base64.b64encode(raw).decode()
msg = {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": [
    {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64}},
    {"type": "text", "text": "Describe the image."}]}]}
pad = max_body - len(json.dumps(msg).encode()) - 16
if pad < 0:
    fail(f"the image ({len(raw)} bytes) does not fit a {max_body}-byte body")
msg["messages"][0]["content"][1]["text"] = "Describe the image."
full = json.dumps(msg).encode()
full += b" " * (max_body - len(full))  # JSON whitespace up to the limit: a maximal body
results = []
lock = threading.Lock()
go = threading.Barrier(n_conc)


def one():
    try:
        s = socket.create_connection((HOST, PORT))
        go.wait()
        s.sendall(head("/v1/chat/completions", len(full), key) + full)
        st = status_of(s, 300)
        s.close()
    except OSError as e:
        st = str(e)
    with lock:
        results.append(st)


base = rss_kb()
ts = [threading.Thread(target=one) for _ in range(n_conc)]
t0 = time.time()
for t in ts:
    t.start()
for t in ts:
    t.join()
peak = rss_kb("VmHWM")
codes = {c: results.count(c) for c in set(results)}
print(f"concurrent: {n_conc} x {len(full) / 2**20:.1f} MiB bodies (PNG {len(raw) / 2**20:.1f} MiB) "
      f"in {time.time() - t0:.1f} s, statuses {codes}, RSS before {base / 1024:.0f} MB, "
      f"peak (VmHWM) {peak / 1024:.0f} MB")
# docs/api.md: every admitted body once (C x B), and per work slot the JSON tree and the decoded
# image bytes (< 2 B) plus one RGB image (3 P) and its resize buffers (< P); 64 MB of slack
bound = base * 1024 + n_conc * max_body + slots * (2 * max_body + 4 * max_px) + (64 << 20)
print(f"bound: C x B + G x (2 B + 4 P) + 64 MB = {bound / 2**20:.0f} MB "
      f"(C {n_conc}, B {max_body / 2**20:.1f} MiB, G {slots}, P {max_px / 1e6:.0f} MP)")
if peak * 1024 > bound:
    fail(f"peak {peak / 1024:.0f} MB over the bound {bound / 2**20:.0f} MB")
bad = [c for c in results if c not in (200, 400, 429, 503)]
if bad:
    fail(f"unexpected answers {bad}")
