#!/usr/bin/env bash
# bf16 KV cache (issue 13.5) on a real cluster: the same 2-stage cluster started with workers'
# XC_KV_DTYPE=f32 and then bf16 (the default). /metrics' xcpipe_stage_kv_bytes_per_token summed
# over the stages is layers x 2 (K, V) x kv_heads x head_dim x 4 (f32) or 2 (bf16), read from the
# model's config.json; each worker's log shows the same figure; the coordinator, capped by the
# workers' advertised memory, gives the bf16 stages twice the KV blocks (placement memory model);
# both answer a greedy request. Bad --kv-dtype values exit 2 with one line.
# usage: kv_dtype.sh XCPIPE WORKER COORD
XCPIPE=$1 WORKER=$2 COORD=$3
source "$(dirname "$0")/cluster_lib.sh"
FIX=$(cd "$(dirname "$0")/../fixtures" && pwd)

"$XCPIPE" model make-tiny --out "$T/m" --layers 2 --vocab 1000 --seed 3 \
  --tokenizer "$FIX/tokenizer/tiny.model" > /dev/null || fail "make-tiny failed"
want_tok=$(python3 -c "
import json; c = json.load(open('$T/m/config.json'))
print(c['num_hidden_layers'] * 2 * c['num_key_value_heads'] * (c['hidden_size'] // c['num_attention_heads']))")

rc=0
"$WORKER" --coordinator tcp://127.0.0.1:1 --kv-dtype f16 2> "$T/bad.txt" || rc=$?
[ $rc = 2 ] && [ "$(wc -l < "$T/bad.txt")" = 1 ] || fail "bad --kv-dtype: exit $rc, not 2 with one line"
rc=0
XC_KV_DTYPE=x "$XCPIPE" generate --model "$T/m" --prompt hi 2> /dev/null || rc=$?
[ $rc = 2 ] || fail "XC_KV_DTYPE=x: generate exit $rc, not 2"

run() { # run DTYPE: starts the cluster, prints "sum_bytes_per_token blocks answer"
  local dt=$1 ep port
  ep="tcp://127.0.0.1:$(free_port)"
  port=$(free_port)
  PIDS=()
  XC_KV_DTYPE=$dt start_workers 3 "$ep" "$dt" --mem-mb 24
  "$COORD" --model "$T/m" --endpoint "$ep" --stages 2 --port "$port" --served-model-name tiny \
    --kv-blocks 1000000 --canary-interval 0 2> "$T/coord-$dt.log" &
  PIDS+=($!)
  local end=$((SECONDS + 30))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/ready")" = 200 ]; do
    [ $SECONDS -lt $end ] || fail "$dt: /ready not 200 within 30 s"
    sleep 0.1
  done
  python3 - "$port" "$dt" << 'PY' || fail "$dt: request or metrics failed"
import http.client, json, re, sys
port, dt = int(sys.argv[1]), sys.argv[2]
c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
body = {"model": "tiny", "max_tokens": 8, "temperature": 0,
        "messages": [{"role": "user", "content": "Tell me a story"}]}
c.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
r = c.getresponse()
assert r.status == 200, r.status
ans = json.loads(r.read())["choices"][0]["message"]["content"]
c.request("GET", "/metrics")
m = c.getresponse().read().decode()
v = [float(x) for x in re.findall(r'xcpipe_stage_kv_bytes_per_token\{replica="0",stage="\d"\} (\S+)', m)]
assert len(v) == 2, v
print(f"{sum(v):.0f}", json.dumps(ans))
PY
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  PIDS=()
}

run f32 > "$T/f32.txt"
run bf16 > "$T/bf16.txt"
read -r m32 a32 < "$T/f32.txt"
read -r m16 a16 < "$T/bf16.txt"
[ "$m32" = $((want_tok * 4)) ] || fail "f32: /metrics KV bytes per token $m32, want $((want_tok * 4))"
[ "$m16" = $((want_tok * 2)) ] || fail "bf16: /metrics KV bytes per token $m16, want $((want_tok * 2))"
# the stage workers' logs: "kv BLOCKS x 16 DTYPE (N bytes per token, ...)"
sum_log() { grep -ho "kv [0-9]* x [0-9]* $1 ([0-9]* bytes per token" "$T"/"$1"?.log | awk '{gsub(/[(]/, "", $6); s += $6} END {print s}'; }
blocks() { grep -ho "kv [0-9]* x [0-9]* $1" "$T"/"$1"?.log | awk '$2 > 0 {print $2; exit}'; }
[ "$(sum_log f32)" = "$m32" ] || fail "f32 worker logs: $(sum_log f32) bytes per token"
[ "$(sum_log bf16)" = "$m16" ] || fail "bf16 worker logs: $(sum_log bf16) bytes per token"
b32=$(blocks f32) b16=$(blocks bf16)
python3 -c "import sys; r = $b16 / $b32; sys.exit(0 if 1.98 <= r <= 2.02 else 1)" ||
  fail "KV blocks from 24 MiB: f32 $b32, bf16 $b16 (want twice)"
echo "KV bytes per token: f32 $m32, bf16 $m16 (/metrics and worker logs); KV blocks in 24 MiB:" \
  "f32 $b32, bf16 $b16; greedy answers: f32 $a32, bf16 $a16"
