#!/usr/bin/env bash
# xcpipe batch against the local cluster it starts itself (--model, 2 stages, tiny model):
# a 200-request job is SIGKILLed midway (the cluster it started must go away too), a torn record
# is appended (as a crash inside write() or a power loss leaves one), the same command is rerun:
# every custom_id appears exactly once, every line parses, the records from before the kill are
# kept byte for byte. Then a second job is stopped with SIGINT (exit 130, whole lines, in-flight
# requests finished) and rerun; greedy answers match the first job's per custom_id. Nothing is
# left running.
# usage: batch_resume.sh XCPIPE
set -euo pipefail
XCPIPE=$1
HERE=$(cd "$(dirname "$0")" && pwd)
FIX=$HERE/../fixtures
PY=/usr/bin/python3
T=$(mktemp -d /tmp/xc-batch-XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2> /dev/null || true; done
  rm -rf "$T"
}
trap cleanup EXIT
fail() {
  echo "batch_resume.sh: $*" >&2
  for f in "$T"/*.log; do [ -f "$f" ] && { echo "== $f" >&2; tail -20 "$f" >&2; }; done
  exit 1
}

"$XCPIPE" model make-tiny --out "$T/m" --layers 4 --vocab 1000 --seed 3 \
  --tokenizer "$FIX/tokenizer/tiny.model" > /dev/null || fail "make-tiny failed"
N=200
for i in $(seq 0 $((N - 1))); do
  printf '{"custom_id":"req-%03d","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"Outline %d: a short article about topic %d."}],"max_tokens":96,"temperature":0}}\n' \
    "$i" "$i" $((i * 7 % 31))
done > "$T/in.jsonl"
BATCH=("$XCPIPE" batch --input "$T/in.jsonl" --model "$T/m" --stages 2 --concurrency 4
  --progress lines --progress-interval 1)

lines() { if [ -f "$1" ]; then wc -l < "$1"; else echo 0; fi; }
# start_until OUT LOG MIN: runs the batch in the background until OUT has MIN lines; sets BPID
start_until() {
  "${BATCH[@]}" --output "$1" 2> "$2" &
  BPID=$!
  PIDS+=("$BPID")
  local end=$((SECONDS + 60))
  until [ "$(lines "$1")" -ge "$3" ]; do
    kill -0 "$BPID" 2> /dev/null || fail "batch ended before $3 records"
    [ $SECONDS -lt $end ] || fail "no $3 records within 60 s"
    sleep 0.02
  done
}
# the processes of the local cluster: the serve child of the batch and its workers
cluster_pids() {
  local s
  for s in $(pgrep -P "$1" || true); do echo "$s"; pgrep -P "$s" || true; done
}
wait_gone() { # wait_gone SECONDS PID...
  local end=$((SECONDS + $1)) p
  shift
  for p in "$@"; do
    while kill -0 "$p" 2> /dev/null; do
      [ $SECONDS -lt $end ] || fail "process $p still running $(tr '\0' ' ' < /proc/$p/cmdline)"
      sleep 0.1
    done
  done
}

# ---- 1: SIGKILL midway, a torn record, rerun ----
start_until "$T/out.jsonl" "$T/run1.log" 30
mapfile -t CL < <(cluster_pids "$BPID")
[ "${#CL[@]}" -ge 3 ] || fail "expected serve + 3 workers under the batch, got ${CL[*]:-none}"
PIDS+=("${CL[@]}")
kill -9 "$BPID"
wait "$BPID" 2> /dev/null || true
killed_at=$(lines "$T/out.jsonl")
[ "$killed_at" -lt $N ] || fail "the job finished before the kill"
# the cluster it started notices (parent-death signal) and stops, workers included
wait_gone 30 "${CL[@]}"
cp "$T/out.jsonl" "$T/before.jsonl"
# a record torn by the crash: no newline
printf '{"id":"batch_req_torn","custom_id":"req-199","response":{"status_code":200,"body":{"cho' \
  >> "$T/out.jsonl"
"${BATCH[@]}" --output "$T/out.jsonl" 2> "$T/run2.log" || fail "the rerun failed ($?)"
grep -q "cut off a torn last line" "$T/run2.log" || fail "the torn line was not reported"
grep -q "already answered" "$T/run2.log" || fail "no resume summary"
cmp -s "$T/before.jsonl" <(head -c "$(stat -c %s "$T/before.jsonl")" "$T/out.jsonl") ||
  fail "the records from before the kill changed"

check() { # check FILE: every line parses, every custom_id of the input exactly once, all 200
  "$PY" - "$1" "$N" << 'EOF' || fail "check of $1 failed"
import json, sys
path, n = sys.argv[1], int(sys.argv[2])
seen = {}
with open(path, "rb") as f:
    data = f.read()
assert data.endswith(b"\n"), "the file does not end with a newline"
for no, raw in enumerate(data.split(b"\n")[:-1], 1):
    rec = json.loads(raw)  # every line parses
    cid = rec["custom_id"]
    assert cid not in seen, f"line {no}: {cid} already on line {seen[cid]}"
    seen[cid] = no
    assert rec["error"] is None and rec["response"]["status_code"] == 200, f"line {no}: {rec}"
    assert rec["id"].startswith("batch_req_")
    body = rec["response"]["body"]
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] >= 1
want = {"req-%03d" % i for i in range(n)}
assert set(seen) == want, f"missing {sorted(want - set(seen))[:5]}, extra {sorted(set(seen) - want)[:5]}"
print(f"{path}: {len(seen)} records, each custom_id once")
EOF
}
check "$T/out.jsonl"

# ---- 2: SIGINT midway: clean stop, exit 130, rerun ----
start_until "$T/out2.jsonl" "$T/run3.log" 30
mapfile -t CL < <(cluster_pids "$BPID")
PIDS+=("${CL[@]}")
kill -INT "$BPID"
rc=0
wait "$BPID" || rc=$?
[ "$rc" = 130 ] || fail "SIGINT: exit $rc, expected 130"
grep -q "stopping: no new requests" "$T/run3.log" || fail "no stop message"
grep -q "interrupted: rerun the same command" "$T/run3.log" || fail "no interrupted summary"
wait_gone 10 "${CL[@]}" # the batch stopped its cluster itself
n2=$(lines "$T/out2.jsonl")
[ "$n2" -lt $N ] || fail "the job finished before SIGINT"
[ "$(tail -c 1 "$T/out2.jsonl" | od -An -c | tr -d ' ')" = '\n' ] || fail "a torn line after SIGINT"
"${BATCH[@]}" --output "$T/out2.jsonl" 2> "$T/run4.log" || fail "the rerun after SIGINT failed"
check "$T/out2.jsonl"

# greedy answers do not depend on where a job was cut (batch-invariant kernels)
"$PY" - "$T/out.jsonl" "$T/out2.jsonl" << 'EOF' || fail "answers differ between the two jobs"
import json, sys
def answers(p):
    return {r["custom_id"]: r["response"]["body"]["choices"][0]["message"]["content"]
            for r in map(json.loads, open(p, "rb"))}
a, b = answers(sys.argv[1]), answers(sys.argv[2])
diff = [k for k in a if a[k] != b[k]]
assert not diff, f"{len(diff)} differ, e.g. {diff[:3]}"
EOF
echo "batch_resume: ok (killed at $killed_at/$N records, interrupted at $n2/$N)"
