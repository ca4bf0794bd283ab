#!/usr/bin/env bash
# Compositions end to end: `xcpipe serve` (coordinator + vision worker + 2 decoder stages) on the
# tiny 7b reference checkpoint with a local image-search service (compose_search.py serving
# tests/fixtures/image/src): POST /v1/compositions whole and streamed (every stage's event), with
# searched images (the service's contract, the exclude list growing, an unreachable candidate
# skipped) and with uploads, /v1/compositions/edit, the errors; `xcpipe compose --endpoint`
# writing article.md and the images it names; then a batch of 10 compositions with
# --documents-dir SIGKILLed midway and rerun: every custom_id answered once, every document
# present once, the documents written before the kill untouched, no temporary directory left.
# usage: compose_e2e.sh XCPIPE
set -euo pipefail
XCPIPE=$1
HERE=$(cd "$(dirname "$0")" && pwd)
FIX=$HERE/../fixtures
MODEL=$FIX/reference/7b
PY=/usr/bin/python3
T=$(mktemp -d /tmp/xc-compose-XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -TERM "$p" 2> /dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2> /dev/null || true; done
  rm -rf "$T"
}
trap cleanup EXIT
fail() {
  echo "compose_e2e.sh: $*" >&2
  for f in "$T"/*.log; do [ -f "$f" ] && { echo "== $f" >&2; tail -20 "$f" >&2; }; done
  exit 1
}
free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# the image-search service
$PY "$HERE/compose_search.py" "$FIX/image/src" "$T/sport" "$T/search.jsonl" 2> "$T/search.log" &
PIDS+=($!)
for _ in $(seq 100); do [ -f "$T/sport" ] && break; sleep 0.1; done
[ -f "$T/sport" ] || fail "the search service did not start"
SP=$(cat "$T/sport")

port=$(free_port)
"$XCPIPE" serve --model "$MODEL" --stages 2 --port "$port" --canary-interval 0 \
  --served-model-name tiny7b --image-search-url "http://127.0.0.1:$SP/image/similar" \
  --allowed-media-domains 127.0.0.1 --allow-private-media --media-timeout 5 \
  --allowed-media-dir "$FIX/image/src" > "$T/serve.log" 2>&1 &
PIDS+=($!)
U="http://127.0.0.1:$port"
end=$((SECONDS + 120))
until [ "$(curl -s -o /dev/null -w '%{http_code}' "$U/ready")" = 200 ]; do
  [ $SECONDS -lt $end ] || fail "/ready not 200 within 120 s"
  sleep 0.2
done

post() { # post PATH JSON -> status, body in $T/body
  curl -s -o "$T/body" -w '%{http_code}' -H 'Content-Type: application/json' "$U$1" -d "$2"
}
expect() { # expect STATUS PATH JSON
  local got
  got=$(post "$2" "$3")
  [ "$got" = "$1" ] || fail "want $1, got $got for $2 $3: $(head -c 400 "$T/body")"
}
C=/v1/compositions

# errors
[ "$(curl -s -o /dev/null -w '%{http_code}' "$U$C")" = 405 ] || fail "GET $C is not 405"
expect 400 $C '{"images":[]}'
expect 400 $C '{"instruction":"x","image_count":16}'
expect 400 $C '{"instruction":"x","bogus":1}'
expect 404 $C '{"instruction":"x","model":"gpt-4"}'
expect 403 $C '{"instruction":"x","images":["file:///etc/passwd"]}'
expect 400 $C/edit '{"paragraphs":["a"],"index":0,"type":"insert_after","instruction":""}'
expect 400 $C/edit '{"paragraphs":["a"],"index":1,"type":"rewrite"}'
expect 400 $C/edit '{"paragraphs":["a"],"index":0,"type":"shorten"}'

# the demo's procedure with the model's own positions (the tiny model names none, usually)
expect 200 $C '{"instruction":"Write about free software.","max_tokens":24,"temperature":0}'
$PY - "$T/body" << 'EOF' || fail "bad composition: $(head -c 600 "$T/body")"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["object"] == "composition" and r["paragraphs"], r
steps = [s["step"] for s in r["usage"]["steps"]]
assert steps[:2] == ["article", "positions"], steps
assert r["usage"]["steps"][1]["completion_tokens"] <= 200
EOF

# searched images: fixed positions (extension) run captions, search and selection
: > "$T/search.jsonl"
expect 200 $C '{"instruction":"Write about licenses.","max_tokens":24,"temperature":0,"positions":[0,0,7]}'
$PY - "$T/body" "$T/search.jsonl" << 'EOF' || fail "bad searched composition: $(head -c 600 "$T/body")"
import base64, json, sys
r = json.load(open(sys.argv[1]))
q = [json.loads(l) for l in open(sys.argv[2])]
steps = [s["step"] for s in r["usage"]["steps"]]
# three captions (0, 0 again, 7), two searches (distinct positions), one selection (7 is past
# the article: captioned and searched, never shown)
assert steps.count("caption") == 3 and "positions" not in steps, steps
assert len(q) == 2, q
assert all(x["need_idxs"] is True and len(x["caption"]) <= 53 for x in q), q
assert q[0]["exclude"] == [] and len(q[1]["exclude"]) == 4, q
assert steps.count("selection") == 1, steps
shown = [i for i in r["images"] if i["name"]]
assert len(shown) == 1 and shown[0]["paragraph"] == 0 and shown[0]["source"] == "search", r["images"]
assert shown[0]["url"].startswith("http://127.0.0.1:") and "missing" not in shown[0]["url"]
assert shown[0]["data"].startswith("data:image/")
base64.b64decode(shown[0]["data"].split(",", 1)[1], validate=True)
assert '<div align="center"> <img src=%s width = 500/> </div>' % shown[0]["name"] in r["markdown"]
EOF

# uploads: one upload, one position: the demo picks it without asking the model
IMG=$FIX/image/src/png_rgb_gradient_320x240.png
expect 200 $C "{\"instruction\":\"Describe.\",\"max_tokens\":16,\"temperature\":0,\"images\":[\"file://$IMG\"],\"positions\":[0]}"
$PY - "$T/body" << 'EOF' || fail "bad upload composition: $(head -c 600 "$T/body")"
import json, sys
r = json.load(open(sys.argv[1]))
i = r["images"]
assert len(i) == 1 and i[0]["source"] == "upload" and i[0]["upload"] == 0 and i[0]["name"] == "upload_0.png", i
assert r["usage"]["steps"][0]["prompt_tokens"] > 16  # the upload's rows are in the article prompt
EOF

# streamed: every stage as an SSE event, then the document and [DONE]
curl -sN -H 'Content-Type: application/json' "$U$C" \
  -d '{"instruction":"Write.","max_tokens":16,"temperature":0,"positions":[0],"stream":true}' > "$T/sse"
$PY - "$T/sse" << 'EOF' || fail "bad SSE: $(head -c 600 "$T/sse")"
import json, sys
ev = [l[6:] for l in open(sys.argv[1]).read().split("\n\n") if l.startswith("data: ")]
assert ev[-1] == "[DONE]", ev[-1]
st = [json.loads(e)["stage"] for e in ev[:-1]]
for s in ["article.delta", "paragraphs", "caption", "candidates", "selection", "done"]:
    assert s in st, (s, st)
assert st[-1] == "done" and st.index("paragraphs") < st.index("caption") < st.index("selection")
EOF

# paragraph edits
expect 200 $C/edit '{"paragraphs":["one","two","three"],"index":1,"type":"insert_after","instruction":"a bridge","temperature":0}'
$PY - "$T/body" << 'EOF' || fail "bad edit: $(head -c 600 "$T/body")"
import json, sys
r = json.load(open(sys.argv[1]))
p = r["paragraphs"]
assert r["object"] == "composition.edit" and "\n" not in r["paragraph"]
assert (p == ["one", "two", r["paragraph"], "three"]) if r["text"] else p == ["one", "three"], r
EOF

# the CLI against the server
"$XCPIPE" compose --endpoint "$U" --instruction "Write about GPL." --max-tokens 16 \
  --temperature 0 --out "$T/doc" 2> "$T/cli.log" || fail "xcpipe compose failed"
[ -s "$T/doc/article.md" ] && [ -s "$T/doc/composition.json" ] || fail "no article.md"
grep -q "article: " "$T/cli.log" || fail "no progress on stderr"
for n in $(grep -o 'img src=[^ ]*' "$T/doc/article.md" | cut -d= -f2); do
  [ -s "$T/doc/$n" ] || fail "article.md names $n, which is not there"
done

# a batch of compositions, killed and resumed
N=10
cp "$IMG" "$T/up.png"
for i in $(seq 0 $((N - 1))); do
  printf '{"custom_id":"doc-%02d","method":"POST","url":"/v1/compositions","body":{"instruction":"Article %d about topic %d.","max_tokens":16,"temperature":0,"positions":[0],"images":["%s"]}}\n' \
    "$i" "$i" $((i * 7 % 5)) "$([ $((i % 3)) = 0 ] && echo up.png || echo "")"
done | sed 's/"images":\[""\]/"images":[]/' > "$T/in.jsonl"
BATCH=("$XCPIPE" batch --input "$T/in.jsonl" --output "$T/out.jsonl" --endpoint "$U"
  --documents-dir "$T/docs" --concurrency 2 --progress off)
"${BATCH[@]}" 2> "$T/batch1.log" &
BPID=$!
PIDS+=($BPID)
end=$((SECONDS + 120))
until [ -f "$T/out.jsonl" ] && [ "$(wc -l < "$T/out.jsonl")" -ge 3 ]; do
  [ $SECONDS -lt $end ] || fail "the batch wrote no 3 records in 120 s"
  kill -0 $BPID 2> /dev/null || fail "the batch ended early"
  sleep 0.05
done
kill -9 $BPID
wait $BPID 2> /dev/null || true
before=$(wc -l < "$T/out.jsonl")
[ "$before" -lt $N ] || fail "the batch finished before it was killed"
$PY - "$T/out.jsonl" "$T/docs" > "$T/inodes_before" << 'EOF'
import json, os, sys
for l in open(sys.argv[1]):
    c = json.loads(l)["custom_id"]
    print(c, os.stat(os.path.join(sys.argv[2], c, "article.md")).st_ino)
EOF
"${BATCH[@]}" 2> "$T/batch2.log" || fail "the resumed batch failed: $(tail -5 "$T/batch2.log")"
$PY - "$T/out.jsonl" "$T/docs" "$T/inodes_before" $N << 'EOF' || fail "resume broke exactly-once"
import json, os, sys
out, docs, before, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
recs = [json.loads(l) for l in open(out)]
ids = [r["custom_id"] for r in recs]
assert sorted(ids) == ["doc-%02d" % i for i in range(n)], ids
assert all(r["response"]["status_code"] == 200 for r in recs), recs
assert sorted(os.listdir(docs)) == sorted(ids), os.listdir(docs)  # no .tmp/.old left
for r in recs:
    b = r["response"]["body"]
    assert all("data" not in i for i in b["images"])  # bytes are in the document, not the record
    d = os.path.join(docs, r["custom_id"])
    assert open(os.path.join(d, "article.md")).read() == b["markdown"]
    for i in b["images"]:
        if i["name"]:
            assert os.path.getsize(os.path.join(d, i["name"])) > 0
for l in open(before):
    c, ino = l.split()
    assert os.stat(os.path.join(docs, c, "article.md")).st_ino == int(ino), c  # not rewritten
print("batch: %d documents, %d written before the kill" % (len(recs), len(open(before).readlines())))
EOF
echo "compose_e2e: ok"
