#!/usr/bin/env bash
# The HTTP API against a local cluster on a tiny model (coordinator + vision + 2 decoder stages,
# separate processes): curl for every route, auth and each error status/shape; the official
# openai Python client (pip, cached in the build dir) for whole and streamed chat, images as data
# URLs, n = 2, stop strings, logprobs and usage (api_client.py); completions, tokenize, the
# sampling parameters against a naive reference, nulls, seeds, 404/405, CORS (api_parity.py);
# a streamed request whose client
# goes away frees its KV blocks (/metrics); the deadline; 429 with Retry-After; /ready false
# within the dead timeout when a stage worker is killed and true again after it returns, /health
# true throughout; then a 10 s, 16-client `xcpipe bench serve` with no unexpected status.
# usage: api_serve.sh XCPIPE WORKER COORD VENV_DIR
XCPIPE=$1 WORKER=$2 COORD=$3 VENV=$4
source "$(dirname "$0")/cluster_lib.sh"
HERE=$(cd "$(dirname "$0")" && pwd)
FIX=$HERE/../fixtures

# the openai client, installed once into the build directory
if ! "$VENV/bin/python" -c "import openai" 2> /dev/null; then
  /usr/bin/python3 -m venv --system-site-packages "$VENV" || fail "cannot create $VENV"
  "$VENV/bin/pip" install -q openai > "$T/pip.log" 2>&1 || fail "pip install openai failed"
fi

"$XCPIPE" model make-tiny --out "$T/m" --layers 2 --vocab 1000 --seed 3 \
  --tokenizer "$FIX/tokenizer/tiny.model" > /dev/null || fail "make-tiny failed"
ep="tcp://127.0.0.1:$(free_port)"
port=$(free_port)
KEY=sk-test-$RANDOM$RANDOM
start_workers 3 "$ep" w --heartbeat 0.2
XC_API_KEYS="$KEY" "$COORD" --model "$T/m" --endpoint "$ep" --stages 2 --dead-timeout 1 \
  --port "$port" --served-model-name tiny --max-body-kb 256 --max-images 2 \
  --max-image-mpixels 1 --max-tokens-limit 3000 --max-context 4096 --request-timeout 1.5 \
  --max-concurrent-requests 4 --canary-interval 0.3 --allowed-media-dir "$FIX/image/src" \
  --allowed-origins "https://app.example, https://other.example" \
  2> "$T/coord.log" &
CPID=$!
PIDS+=($CPID)
U="http://127.0.0.1:$port"
AUTH=(-H "Authorization: Bearer $KEY")
wait_ready() { # wait_ready SECONDS
  local end=$((SECONDS + $1))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "${AUTH[@]}" "$U/ready")" = 200 ]; do
    [ $SECONDS -lt $end ] || fail "/ready not 200 within $1 s"
    sleep 0.1
  done
}
wait_ready 30
grep -q "$KEY" "$T/coord.log" && fail "the API key was logged"

# status and error shape: code(body, curl args...)
code() { curl -s -o "$T/body" -w '%{http_code}' "$@"; }
expect() { # expect STATUS ERRCODE_OR_- curl-args...
  local want=$1 ecode=$2; shift 2
  local got
  got=$(code "$@")
  [ "$got" = "$want" ] || fail "want $want, got $got for $*: $(head -c 300 "$T/body")"
  if [ "$want" -ge 400 ]; then
    python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["error"]; assert {"message","type","param","code"} <= set(e), e; assert sys.argv[2]=="-" or e["code"]==sys.argv[2], e' \
      "$T/body" "$ecode" || fail "bad error shape for $*: $(cat "$T/body")"
  fi
}
CH="$U/v1/chat/completions"
MSG='"messages":[{"role":"user","content":"Hello"}]'
expect 200 - "$U/health"
expect 401 invalid_api_key "$U/v1/models"
expect 401 invalid_api_key -H "Authorization: Bearer wrong" "$U/metrics"
expect 200 - "${AUTH[@]}" "$U/v1/models"
expect 404 not_found "${AUTH[@]}" "$U/v2/nothing"
expect 405 method_not_allowed "${AUTH[@]}" "$CH"
expect 400 - "${AUTH[@]}" "$CH" -d '{"model":'
expect 400 - "${AUTH[@]}" "$CH" -d "{\"model\":\"tiny\",$MSG,\"bogus\":1}"
expect 404 model_not_found "${AUTH[@]}" "$CH" -d "{\"model\":\"gpt-4\",$MSG}"
expect 400 - "${AUTH[@]}" "$CH" -d "{\"model\":\"tiny\",$MSG,\"max_tokens\":3001}"
expect 400 - "${AUTH[@]}" "$CH" -d "{\"model\":\"tiny\",$MSG,\"temperature\":7}"
long=$(python3 -c 'print("word " * 5000)')
expect 400 context_length_exceeded "${AUTH[@]}" "$CH" -d "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"$long\"}]}"
python3 -c 'print("{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"" + "x" * 300000 + "\"}]}")' > "$T/big.json"
expect 413 request_too_large "${AUTH[@]}" "$CH" --data-binary "@$T/big.json"
img=$(base64 -w0 "$FIX/image/src/jpg_tiny_3x7.jpg")
part="{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/jpeg;base64,$img\"}}"
expect 400 - "${AUTH[@]}" "$CH" -d "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[$part,$part,$part]}]}"
/usr/bin/python3 -c 'from PIL import Image; Image.new("RGB", (1100, 1000), (9, 99, 199)).save("'"$T"'/big.png")'
bigimg=$(base64 -w0 "$T/big.png")
expect 400 image_too_large "${AUTH[@]}" "$CH" -d "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,$bigimg\"}}]}]}"
expect 400 - "${AUTH[@]}" "$CH" -d "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"https://example.com/x.png\"}}]}]}"
expect 403 - "${AUTH[@]}" "$CH" -d "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"file:///etc/hostname\"}}]}]}"
expect 403 media_not_allowed "${AUTH[@]}" "$CH" -d "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"file://$FIX/image/src/missing.png\"}}]}]}"
expect 200 - "${AUTH[@]}" "$CH" -d "{\"model\":\"tiny\",\"max_tokens\":3,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"file://$FIX/image/src/png_p4bit_80x60.png\"}},{\"type\":\"text\",\"text\":\"hi\"}]}]}"
# the deadline (1.5 s): 8 greedy choices of 3000 tokens take longer
expect 408 request_timeout "${AUTH[@]}" "$CH" -d "{\"model\":\"tiny\",$MSG,\"max_tokens\":3000,\"n\":8,\"temperature\":0,\"ignore_eos\":true}"
echo "routes, auth and error statuses: ok"

# the openai client: chat whole and streamed, images, n, stop, logprobs, usage; disconnects
"$VENV/bin/python" "$HERE/api_client.py" "$U" "$KEY" "$FIX/image/src/jpg_tiny_3x7.jpg" \
  || fail "api_client.py failed"
# vLLM/OpenAI parity (issue 14): completions, tokenize, sampling parameters, CORS, ...
"$VENV/bin/python" "$HERE/api_parity.py" "$U" "$KEY" "$FIX/image/src/jpg_tiny_3x7.jpg" \
  https://app.example || fail "api_parity.py failed"

# queue full: more concurrent requests than --max-concurrent-requests 4
cpids=()
for i in $(seq 8); do
  curl -s -o /dev/null -D "$T/h$i" -w '%{http_code}\n' "${AUTH[@]}" "$CH" \
    -d "{\"model\":\"tiny\",$MSG,\"max_tokens\":2000,\"temperature\":0}" > "$T/c$i" &
  cpids+=($!)
done
for p in "${cpids[@]}"; do wait "$p" || true; done
n429=$(cat "$T"/c* | grep -c 429 || true)
[ "$n429" -ge 1 ] || fail "no 429 with 8 concurrent requests and a limit of 4: $(cat "$T"/c*)"
grep -qi "^Retry-After:" $(grep -l 429 "$T"/c* | head -1 | sed 's/c\([0-9]*\)$/h\1/') \
  || fail "429 without Retry-After"
echo "queue full: $n429 of 8 got 429 with Retry-After"

# a stage worker dies: /ready false within the dead timeout (1 s) + canary, /health stays 200;
# requests get 503; a restarted worker makes /ready true again
victim=$(sed -n 's/.*assigned worker \(w[0-9]\): decoder replica 0 stage 1 .*/\1/p' "$T/coord.log" | tail -1)
[ -n "$victim" ] || fail "no stage-1 assignment in the log"
kill -9 "${PIDS[${victim#w}]}"
t0=$SECONDS
until [ "$(code "${AUTH[@]}" "$U/ready")" = 503 ]; do
  [ $((SECONDS - t0)) -le 3 ] || fail "/ready still 200 3 s after a worker was killed"
  [ "$(code "$U/health")" = 200 ] || fail "/health not 200 while a worker is down"
  sleep 0.05
done
expect 200 - "$U/health"
# the 503 body is valid JSON with a reason
curl -s "${AUTH[@]}" "$U/ready" | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["ready"] is False and d["reason"], d' ||
  fail "/ready 503 body is not valid JSON with a reason"
expect 503 - "${AUTH[@]}" "$CH" -d "{\"model\":\"tiny\",$MSG,\"max_tokens\":2}"
start_workers 1 "$ep" "r" --heartbeat 0.2
wait_ready 20
expect 200 - "${AUTH[@]}" "$CH" -d "{\"model\":\"tiny\",$MSG,\"max_tokens\":2}"
echo "worker killed: /ready 503 within $((SECONDS - t0)) s, /health 200, back to ready after restart"

# a short load run: 16 clients, 10 s, mixed text and image, streaming
"$XCPIPE" bench serve --url "$U" --api-key "$KEY" --model tiny --clients 16 --duration 10 \
  --max-tokens 32 --image "$FIX/image/src/jpg_tiny_3x7.jpg" --coordinator-pid "$CPID" \
  > "$T/bench.txt" 2>&1 || fail "bench serve failed: $(cat "$T/bench.txt")"
cat "$T/bench.txt"
grep -q "^errors: none" "$T/bench.txt" || fail "bench serve saw unexpected statuses"

kill -TERM "$CPID"
timeout 15 tail --pid="$CPID" -f /dev/null || fail "the coordinator did not exit on SIGTERM"
echo "api_serve: all checks passed"
