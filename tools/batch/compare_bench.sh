#!/usr/bin/env bash
# Throughput of `xcpipe batch` next to `xcpipe bench serve` at the same concurrency, against one
# running `xcpipe serve` on a tiny model: bench serve runs DURATION seconds of streaming requests,
# then batch sends as many non-streaming requests (same prompt, model, max_tokens) as bench serve
# completed, fsync on every record (the default). Prints requests/s and tokens/s of both and the
# ratio, ROUNDS times alternating.
# usage: tools/batch/compare_bench.sh XCPIPE [CONCURRENCY=8] [DURATION=10] [ROUNDS=2] [LAYERS=4]
set -euo pipefail
XCPIPE=$(realpath "$1")
C=${2:-8} D=${3:-10} ROUNDS=${4:-2} LAYERS=${5:-4}
HERE=$(cd "$(dirname "$0")" && pwd)
T=$(mktemp -d /tmp/xc-batch-bench-XXXXXX)
SPID=
trap '[ -n "$SPID" ] && kill -9 $SPID 2> /dev/null; rm -rf "$T"' EXIT
"$XCPIPE" model make-tiny --out "$T/m" --layers "$LAYERS" --vocab 1000 --seed 3 \
  --tokenizer "$HERE/../../tests/fixtures/tokenizer/tiny.model" > /dev/null
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
KEY=sk-bench-$RANDOM
XC_API_KEYS=$KEY "$XCPIPE" serve --model "$T/m" --stages 2 --port "$port" --served-model-name tiny \
  --max-concurrent-requests 4096 --canary-interval 0 > "$T/serve.log" 2>&1 &
SPID=$!
U=http://127.0.0.1:$port
until [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $KEY" "$U/ready")" = 200 ]; do
  sleep 0.2
done
PROMPT="Write a short article about the sea."
echo "$KEY" > "$T/key"
for r in $(seq 1 "$ROUNDS"); do
  "$XCPIPE" bench serve --url "$U" --api-key "$KEY" --model tiny --clients "$C" --duration "$D" \
    --max-tokens 64 --prompt "$PROMPT" > "$T/bench.txt"
  line=$(grep '^requests:' "$T/bench.txt")
  breq=$(echo "$line" | sed -E 's/.*ok \(([0-9.]+)\/s\).*/\1/')
  btok=$(echo "$line" | sed -E 's/.*tokens: [0-9]+ \(([0-9.]+)\/s\).*/\1/')
  n=$(echo "$line" | sed -E 's/requests: ([0-9]+) ok.*/\1/')
  for i in $(seq 1 "$n"); do
    printf '{"custom_id":"q%d","method":"POST","url":"/v1/chat/completions","body":{"model":"tiny","max_tokens":64,"messages":[{"role":"user","content":"%s"}]}}\n' "$i" "$PROMPT"
  done > "$T/in.jsonl"
  rm -f "$T/out.jsonl"
  "$XCPIPE" batch --input "$T/in.jsonl" --output "$T/out.jsonl" --endpoint "$U" \
    --api-key-file "$T/key" --concurrency "$C" --progress off 2> "$T/batch.txt"
  s=$(grep 'req/s' "$T/batch.txt")
  qreq=$(echo "$s" | sed -E 's/.*: ([0-9.]+) req\/s.*/\1/')
  qtok=$(echo "$s" | sed -E 's/.*req\/s, ([0-9.]+) completion.*/\1/')
  echo "round $r, concurrency $C: bench serve $breq req/s $btok tok/s ($n requests in ${D} s);" \
    "batch $qreq req/s $qtok tok/s ($n requests); batch/bench:" \
    "$(/usr/bin/python3 -c "print('%.3f req, %.3f tok' % ($qreq/$breq, $qtok/$btok))")"
done
kill -TERM "$SPID"
wait "$SPID" || true
SPID=
