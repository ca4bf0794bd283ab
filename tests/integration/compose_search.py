#!/usr/bin/env python3
"""A local image-search service for the composition tests, speaking the contract of the one the
XComposer2 demo calls (POST {"caption", "exclude", "need_idxs": true} -> {"data": {"image_urls":
[...], "indices": [...]}}), over a folder of images served at /img/NAME. It returns 4 images
chosen from the caption's hash, skipping excluded indices, and logs every query as one JSON line.

usage: compose_search.py DIR PORT_FILE LOG
"""
import hashlib
import http.server
import json
import os
import sys

DIR, PORT_FILE, LOG = sys.argv[1], sys.argv[2], sys.argv[3]
NAMES = sorted(n for n in os.listdir(DIR) if n.endswith(('.png', '.jpg')) and
               os.path.getsize(os.path.join(DIR, n)) < 200000)


class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        name = self.path[len('/img/'):] if self.path.startswith('/img/') else ''
        if name not in NAMES:
            self.send_error(404)
            return
        data = open(os.path.join(DIR, name), 'rb').read()
        self.send_response(200)
        self.send_header('Content-Type', 'image/png' if name.endswith('.png') else 'image/jpeg')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
        q = json.loads(body)
        with open(LOG, 'a') as f:
            f.write(json.dumps(q, ensure_ascii=False) + '\n')
        h = int(hashlib.sha256(q['caption'].encode()).hexdigest(), 16)
        port = self.server.server_address[1]
        idx = [i for i in ((h + k) % len(NAMES) for k in range(len(NAMES)))
               if i not in set(q.get('exclude', []))][:4]
        # one unreachable URL among them: the demo skips a failed download
        urls = [f'http://127.0.0.1:{port}/img/{NAMES[i]}' for i in idx]
        if len(urls) > 1:
            urls[1] = f'http://127.0.0.1:{port}/img/missing.png'
        out = json.dumps({'data': {'image_urls': urls, 'indices': idx}}).encode()
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(out)))
        self.end_headers()
        self.wfile.write(out)


srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)
with open(PORT_FILE + '.tmp', 'w') as f:
    f.write(str(srv.server_address[1]))
os.rename(PORT_FILE + '.tmp', PORT_FILE)
srv.serve_forever()
