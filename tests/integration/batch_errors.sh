#!/usr/bin/env bash
# xcpipe batch --endpoint against a running `xcpipe serve` (tiny model, API key): a job with
# malformed JSON, a wrong url, a wrong method, invalid bodies, a duplicate custom_id, a missing
# image file and a path escaping the input directory, a body the server refuses (400), a body
# without a model, and a real PNG by path. The documented messages name each line, the valid
# lines complete, the errors file holds the refusals with their codes, duplicates are refused up
# front (never sent, never recorded). A wrong key stops the job without records; rerunning sends
# nothing new. The examples in examples/articles/ run through the same server.
# usage: batch_errors.sh XCPIPE
set -euo pipefail
XCPIPE=$1
HERE=$(cd "$(dirname "$0")" && pwd)
FIX=$HERE/../fixtures
EX=$HERE/../../examples/articles
PY=/usr/bin/python3
T=$(mktemp -d /tmp/xc-batche-XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2> /dev/null || true; done
  rm -rf "$T"
}
trap cleanup EXIT
fail() {
  echo "batch_errors.sh: $*" >&2
  for f in "$T"/*.log; do [ -f "$f" ] && { echo "== $f" >&2; tail -20 "$f" >&2; }; done
  exit 1
}

"$XCPIPE" model make-tiny --out "$T/m" --layers 2 --vocab 1000 --seed 3 \
  --tokenizer "$FIX/tokenizer/tiny.model" > /dev/null || fail "make-tiny failed"
port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
KEY=sk-batch-$RANDOM$RANDOM
printf '# the key\n%s\n' "$KEY" > "$T/key.txt"
XC_API_KEYS=$KEY "$XCPIPE" serve --model "$T/m" --stages 1 --port "$port" \
  --served-model-name tiny > "$T/serve.log" 2>&1 &
SPID=$!
PIDS+=("$SPID")
U=http://127.0.0.1:$port
end=$((SECONDS + 60))
until [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $KEY" "$U/ready")" = 200 ]; do
  kill -0 "$SPID" 2> /dev/null || fail "serve exited"
  [ $SECONDS -lt $end ] || fail "/ready not 200 within 60 s"
  sleep 0.2
done

mkdir -p "$T/job/img"
"$PY" -c 'from PIL import Image; Image.new("RGB", (40, 30), (200, 30, 90)).save("'"$T"'/job/img/red.png")'
echo "outside" > "$T/secret.png"
ok() { # ok ID TEXT [EXTRA]
  printf '{"custom_id":"%s","method":"POST","url":"/v1/chat/completions","body":{"model":"tiny","messages":[{"role":"user","content":"%s"}],"max_tokens":6%s}}\n' "$1" "$2" "${3:-}"
}
{
  ok a1 "first"                                                                          # 1
  ok a2 "second" ',"temperature":0'                                                      # 2
  echo '{"custom_id":"a3","method":"POST","url":'                                        # 3
  echo '{"custom_id":"a4","method":"POST","url":"/v1/completions","body":{"prompt":"x"}}' # 4
  echo '{"custom_id":"a5","method":"PUT","url":"/v1/chat/completions","body":{}}'         # 5
  echo '{"custom_id":"a6","method":"POST","url":"/v1/chat/completions","body":{"messages":[]}}' # 6
  ok a2 "second again"                                                                   # 7
  ok a8 "server refuses" ',"max_tokens":-5'                                              # 8
  echo '{"custom_id":"a9","method":"POST","url":"/v1/chat/completions","body":{"messages":[{"role":"user","content":"no model here"}],"max_tokens":4}}' # 9
  echo '{"custom_id":"a10","method":"POST","url":"/v1/chat/completions","body":{"model":"tiny","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"img/missing.png"}}]}]}}' # 10
  echo '{"custom_id":"a11","method":"POST","url":"/v1/chat/completions","body":{"model":"tiny","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"../secret.png"}}]}]}}' # 11
  echo '{"custom_id":"a12","method":"POST","url":"/v1/chat/completions","body":{"model":"tiny","max_tokens":5,"messages":[{"role":"user","content":[{"type":"text","text":"what is this?"},{"type":"image_url","image_url":{"url":"img/red.png"}}]}]}}' # 12
  echo '{"method":"POST","url":"/v1/chat/completions","body":{}}'                        # 13
} > "$T/job/in.jsonl"

B=("$XCPIPE" batch --input "$T/job/in.jsonl" --output "$T/out.jsonl" --errors "$T/err.jsonl"
  --endpoint "$U" --progress off --retry-base 0.05)
rc=0
"${B[@]}" --api-key-file "$T/key.txt" 2> "$T/run1.log" || rc=$?
[ "$rc" = 1 ] || fail "exit $rc with failures and bad lines, expected 1"
for msg in 'input line 3: not valid JSON' \
  'input line 4: url must be "/v1/chat/completions" or "/v1/compositions", not '"'"'/v1/completions'"'"' (custom_id '"'"'a4'"'"')' \
  'input line 5: method must be "POST", not '"'"'PUT'"'"'' \
  'input line 6: body.messages must be a non-empty array' \
  "input line 7: duplicate custom_id 'a2' (first on line 2): refused" \
  "input line 10: image file 'img/missing.png': not found" \
  "input line 11: image file '../secret.png' is outside the input file's directory" \
  'input line 13: custom_id must be a non-empty string' \
  'batch: 5 requests this run: 4 ok, 1 failed'; do
  grep -qF -- "$msg" "$T/run1.log" || fail "missing message: $msg"
done

"$PY" - "$T/out.jsonl" "$T/err.jsonl" << 'EOF' || fail "records are wrong"
import json, sys
out = [json.loads(l) for l in open(sys.argv[1], "rb")]
err = [json.loads(l) for l in open(sys.argv[2], "rb")]
ok = {r["custom_id"]: r for r in out}
assert sorted(ok) == ["a1", "a12", "a2", "a9"], sorted(ok)
for r in out:
    assert r["response"]["status_code"] == 200 and r["error"] is None
    assert r["response"]["body"]["choices"][0]["message"]["role"] == "assistant"
# the duplicate (line 7) never ran: a2's answer is the greedy one of line 2 ("second")
assert ok["a9"]["response"]["body"]["model"] == "tiny"  # filled from /v1/models
assert ok["a12"]["response"]["body"]["usage"]["prompt_tokens"] > ok["a1"]["response"]["body"]["usage"]["prompt_tokens"]
codes = {r["custom_id"]: (r["error"] or {}).get("code") or r["response"]["status_code"] for r in err}
assert codes == {"a4": "invalid_url", "a5": "invalid_method", "a6": "invalid_body",
                 "a8": 400, "a10": "image_file", "a11": "image_file"}, codes
for r in err:
    if r["error"]:
        assert r["response"] is None and r["error"]["message"].startswith("input line ")
    else:
        assert r["response"]["body"]["error"]["message"]
ids = [r["custom_id"] for r in out + err]
assert len(ids) == len(set(ids)), "a custom_id appears twice"
EOF

# a wrong key: stopped at once, nothing recorded
mv "$T/out.jsonl" "$T/out.before"
mv "$T/err.jsonl" "$T/err.before"
echo "sk-wrong" > "$T/bad.txt"
rc=0
"${B[@]}" --api-key-file "$T/bad.txt" 2> "$T/run2.log" || rc=$?
[ "$rc" = 1 ] || fail "a refused key: exit $rc, expected 1"
grep -q "answered 401: the API key was refused" "$T/run2.log" || fail "no 401 message"
[ ! -s "$T/out.jsonl" ] || fail "records written with a refused key"
# rerun of the first job: nothing new to send, the output is unchanged
mv "$T/out.before" "$T/out.jsonl"
mv "$T/err.before" "$T/err.jsonl"
"${B[@]}" --api-key-file "$T/key.txt" 2> "$T/run3.log" || true
grep -q "batch: 0 requests this run" "$T/run3.log" || fail "the rerun sent requests"
# a key file with a key over 512 bytes is refused with its reason (exit 2), never cut short
head -c 600 /dev/zero | tr '\0' k > "$T/long.txt"
cp "$T/out.jsonl" "$T/out.keep"
rc=0
"${B[@]}" --api-key-file "$T/long.txt" 2> "$T/run4.log" || rc=$?
[ "$rc" = 2 ] || fail "a 600-byte key: exit $rc, expected 2"
grep -q "long.txt: the key is longer than 512 bytes" "$T/run4.log" || fail "no long-key message"
cmp -s "$T/out.jsonl" "$T/out.keep" || fail "the output changed on a refused key file"

# the examples run end to end (the tiny model writes nonsense, but every request is answered)
for ex in outline-articles image-articles; do
  "$XCPIPE" batch --input "$EX/$ex.jsonl" --output "$T/$ex.out.jsonl" --endpoint "$U" \
    --api-key-file "$T/key.txt" --set-model tiny --progress off 2> "$T/$ex.log" ||
    fail "example $ex failed"
  [ "$(wc -l < "$T/$ex.out.jsonl")" = "$(grep -c . "$EX/$ex.jsonl")" ] || fail "$ex: records missing"
done

kill -TERM "$SPID"
wait "$SPID" || fail "serve exited with $? after SIGTERM"
echo "batch_errors: ok"
