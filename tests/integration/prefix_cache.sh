#!/usr/bin/env bash
# Image-aware prefix caching on a real cluster (issue 13.1, 13.3): vision worker + 2 stages of a
# tiny model, the HTTP API, the same requests with the prefix cache on and off (--no-prefix-cache):
# * turn 2 of a chat about one image (the whole history re-sent) takes turn 1's full KV blocks
#   from the cache: no vision job, only the rows after them computed
#   (xcpipe_prompt_rows_computed_total + xcpipe_prefix_cache_hit_rows_total = its prompt tokens);
# * n = 4 with one image: one vision job and exactly the prompt rows of n = 1 (one prefill; the
#   other choices are forked from its last row, issue 13.3), the other choices' prompts counted as
#   cache hits;
# * every answer, and the logprobs of turn 2 and of n = 4, identical with the cache on and off
#   (off: each choice prefills on its own); choice 0 of n = 4 equal to a separate seeded request.
# usage: prefix_cache.sh XCPIPE WORKER COORD
XCPIPE=$1 WORKER=$2 COORD=$3
source "$(dirname "$0")/cluster_lib.sh"
FIX=$(cd "$(dirname "$0")/../fixtures" && pwd)

"$XCPIPE" model make-tiny --out "$T/m" --layers 2 --vocab 1000 --seed 3 \
  --tokenizer "$FIX/tokenizer/tiny.model" > /dev/null || fail "make-tiny failed"
for i in 1 2 3; do
  f=$(ls "$FIX"/image/src/*.jpg | sed -n "${i}p")
  base64 -w0 "$f" > "$T/img$i.b64"
done

run() { # run NAME [coordinator flags]: prints one JSON line of answers and counters
  local name=$1 ep port
  shift
  ep="tcp://127.0.0.1:$(free_port)"
  port=$(free_port)
  PIDS=()
  start_workers 3 "$ep" "$name" --heartbeat 0.1 --image-cache-mb 0
  "$COORD" --model "$T/m" --endpoint "$ep" --stages 2 --port "$port" --served-model-name tiny \
    --canary-interval 0 "$@" 2> "$T/coord-$name.log" &
  PIDS+=($!)
  local end=$((SECONDS + 30))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/ready")" = 200 ]; do
    [ $SECONDS -lt $end ] || fail "$name: /ready not 200 within 30 s"
    sleep 0.1
  done
  python3 - "$port" "$T" << 'PY' || fail "$name: requests or metrics failed"
import http.client, json, re, sys
port, T = int(sys.argv[1]), sys.argv[2]
img = [open("%s/img%d.b64" % (T, i)).read() for i in (1, 2, 3)]
def post(body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    d = r.read()
    assert r.status == 200, (r.status, d)
    return json.loads(d)
def metrics():
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/metrics")
    m = c.getresponse().read().decode()
    get = lambda n: int(float(re.search(r"^%s (\S+)$" % n, m, re.M)[1]))
    return [get("xcpipe_prompt_rows_computed_total"), get("xcpipe_prefix_cache_hit_rows_total"),
            get("xcpipe_vision_images_total"), get("xcpipe_input_image_cache_hits_total")]
def user(i, text):
    return {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + img[i]}},
        {"type": "text", "text": text}]}
out = {}
def step(key, body):
    m0 = metrics()
    d = post(body)
    m1 = metrics()
    out[key] = {"answers": [c["message"]["content"] for c in d["choices"]],
                "prompt": d["usage"]["prompt_tokens"],
                "rows": m1[0] - m0[0], "hit": m1[1] - m0[1], "vision": m1[2] - m0[2],
                "input_hit": m1[3] - m0[3]}
    if body.get("logprobs"):
        out[key]["lp"] = [json.dumps(c["logprobs"]) for c in d["choices"]]
    return d
t1 = [user(0, "What is in the picture?")]
d = step("turn1", {"model": "tiny", "max_tokens": 6, "temperature": 0, "messages": t1})
t2 = t1 + [{"role": "assistant", "content": d["choices"][0]["message"]["content"]},
           {"role": "user", "content": "And what colour is it?"}]
step("turn2", {"model": "tiny", "max_tokens": 6, "temperature": 0, "messages": t2,
               "logprobs": True, "top_logprobs": 3})
seeded = {"model": "tiny", "max_tokens": 8, "temperature": 0.9, "seed": 5}
step("n1", dict(seeded, messages=[user(1, "Describe it.")]))
step("n4", dict(seeded, n=4, messages=[user(2, "Describe it.")], logprobs=True, top_logprobs=2))
step("sep", dict(seeded, messages=[user(2, "Describe it.")]))
# text only: the first choice is ready at once, so its siblings fork only if they reach the
# scheduler before its last prompt chunk is formed (reported, not required)
step("t4", dict(seeded, n=4, messages=[{"role": "user", "content": "Tell me a long story."}]))
print(json.dumps(out))
PY
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  PIDS=()
}

run on > "$T/on.json"
run off --no-prefix-cache > "$T/off.json"
python3 - "$T/on.json" "$T/off.json" << 'PY' || fail "checks failed"
import json, sys
on, off = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
BS = 16  # --block-size default
def check(cond, what):
    if not cond:
        sys.exit("FAIL: %s\non  %s\noff %s" % (what, json.dumps(on), json.dumps(off)))
for k in on:
    check(on[k]["answers"] == off[k]["answers"], "%s: answers differ with the cache on and off" % k)
    for r in (on, off):
        check(r[k]["rows"] + r[k]["hit"] == r[k]["prompt"] * len(r[k]["answers"]),
              "%s: computed + cached rows != prompt tokens" % k)
    check(off[k]["hit"] == 0, "%s: cache hits with --no-prefix-cache" % k)
check(on["turn2"]["lp"] == off["turn2"]["lp"], "turn 2: logprobs differ with the cache on and off")
check(on["n4"]["lp"] == off["n4"]["lp"], "n = 4: logprobs differ with the cache on and off")
for r in (on, off):  # turn 2 re-sends turn 1's image bytes: found decoded (input image cache)
    check(r["turn1"]["input_hit"] == 0 and r["turn2"]["input_hit"] == 1,
          "input image cache hits: turn 1 %d (want 0), turn 2 %d (want 1)" %
          (r["turn1"]["input_hit"], r["turn2"]["input_hit"]))
p1, p2 = on["turn1"]["prompt"], on["turn2"]["prompt"]
check(on["turn2"]["vision"] == 0 and off["turn2"]["vision"] == 1,
      "turn 2: vision jobs on %d (want 0), off %d (want 1)" % (on["turn2"]["vision"],
                                                               off["turn2"]["vision"]))
check(on["turn2"]["hit"] >= (p1 - 1) // BS * BS,
      "turn 2 reused %d rows; turn 1's %d-row prompt has %d in full blocks" %
      (on["turn2"]["hit"], p1, (p1 - 1) // BS * BS))
n4, n1 = on["n4"], on["n1"]
check(len(n4["answers"]) == 4 and n4["prompt"] == n1["prompt"], "n = 4: 4 answers, same prompt")
check(n4["vision"] == n1["vision"] == 1, "n = 4: %d vision images (n = 1: %d)" %
      (n4["vision"], n1["vision"]))
check(n4["rows"] == n1["rows"],
      "n = 4 computed %d prompt rows; n = 1 %d (one prefill, the other choices forked)" %
      (n4["rows"], n1["rows"]))
check(off["n4"]["vision"] == 4 and off["n4"]["rows"] == 4 * n4["prompt"], "n = 4 without cache")
check(on["sep"]["answers"][0] == n4["answers"][0], "choice 0 of n = 4 != a separate request")
check(len(set(n4["answers"])) > 1, "n = 4: all choices equal (sampling at 0.9 should differ)")
t4 = on["t4"]
print("prefix cache: turn 2 of %d prompt rows computed %d (on) / %d (off), no vision job; "
      "n = 4: %d vision image(s) like n = 1, %d prompt rows computed like n = 1's %d (off: %d); "
      "answers and logprobs identical on and off; text-only n = 4 (%d-row prompt): %d rows "
      "computed, %s" %
      (p2, on["turn2"]["rows"], off["turn2"]["rows"], n4["vision"], n4["rows"], n1["rows"],
       off["n4"]["rows"], t4["prompt"], t4["rows"],
       "forked" if t4["hit"] >= 3 * t4["prompt"] else "not forked (a late choice)"))
PY
