#!/usr/bin/env bash
# The vision worker's image embedding cache on a real cluster (issue 13.2): the same chat with
# one image sent three times encodes the image once; /metrics (from the vision worker's
# heartbeats) shows 2 cache hits and 1 miss, and the three greedy answers are identical. With
# --image-cache-mb 0 on the same requests: 0 hits, 3 misses, the same answer. The coordinator
# runs with --no-prefix-cache: with it, a re-sent image whose rows are in cached KV blocks is not
# sent to the vision worker at all (tests/integration/prefix_cache.sh).
# usage: vision_cache.sh XCPIPE WORKER COORD
XCPIPE=$1 WORKER=$2 COORD=$3
source "$(dirname "$0")/cluster_lib.sh"
FIX=$(cd "$(dirname "$0")/../fixtures" && pwd)

"$XCPIPE" model make-tiny --out "$T/m" --layers 2 --vocab 1000 --seed 3 \
  --tokenizer "$FIX/tokenizer/tiny.model" > /dev/null || fail "make-tiny failed"
base64 -w0 "$FIX/image/src/jpg_tiny_3x7.jpg" > "$T/img.b64"

run() { # run CACHE_MB: prints "hits misses", then the answer (or "differ: ..." if the 3 differ)
  local mb=$1 ep port
  ep="tcp://127.0.0.1:$(free_port)"
  port=$(free_port)
  PIDS=()
  start_workers 3 "$ep" "c$mb" --heartbeat 0.1 --image-cache-mb "$mb"
  "$COORD" --model "$T/m" --endpoint "$ep" --stages 2 --port "$port" --served-model-name tiny \
    --canary-interval 0 --no-prefix-cache 2> "$T/coord-$mb.log" &
  PIDS+=($!)
  local end=$((SECONDS + 30))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/ready")" = 200 ]; do
    [ $SECONDS -lt $end ] || fail "cache $mb: /ready not 200 within 30 s"
    sleep 0.1
  done
  python3 - "$port" "$T/img.b64" << 'PY' || fail "cache $mb: requests or metrics failed"
import http.client, json, re, sys, time
port, img = int(sys.argv[1]), open(sys.argv[2]).read()
body = {"model": "tiny", "max_tokens": 6, "temperature": 0, "messages": [{"role": "user", "content": [
    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + img}},
    {"type": "text", "text": "What is in the picture?"}]}]}
answers = []
for _ in range(3):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, (r.status, r.read())
    answers.append(json.loads(r.read())["choices"][0]["message"]["content"])
    c.close()
def metric(m, name):
    v = re.search(r"^%s (\S+)$" % name, m, re.M)
    return int(float(v[1])) if v else -1
t0 = time.time()
while True:  # the counters come with the vision worker's heartbeats (every 0.1 s)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/metrics")
    m = c.getresponse().read().decode()
    h = metric(m, "xcpipe_vision_image_cache_hits_total")
    s = metric(m, "xcpipe_vision_image_cache_misses_total")
    if h + s == 3 or time.time() - t0 > 5:
        break
    time.sleep(0.1)
print(h, s)
print(json.dumps(answers[0]) if len(set(answers)) == 1 else "differ: " + json.dumps(answers))
PY
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  PIDS=()
}

run 64 > "$T/on.txt"
run 0 > "$T/off.txt"
{ read -r h1 m1; read -r a1; } < "$T/on.txt"
{ read -r h0 m0; read -r a0; } < "$T/off.txt"
[ "$h1 $m1" = "2 1" ] || fail "cache on: $h1 hits, $m1 misses (want 2, 1)"
[ "$h0 $m0" = "0 3" ] || fail "cache off: $h0 hits, $m0 misses (want 0, 3)"
[[ $a1 != differ* ]] && [ "$a1" = "$a0" ] || fail "answers differ: cache on $a1, off $a0"
echo "image cache: 3 requests with one image: on 2 hits 1 miss, off 0 hits 3 misses; answers identical ($a1)"
