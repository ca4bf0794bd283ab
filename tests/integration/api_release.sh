#!/usr/bin/env bash
# A streamed request whose client goes away on an otherwise idle cluster (coordinator + vision +
# 2 decoder stages on a tiny model, no canary, no other request): the coordinator frees the
# sequence's KV blocks at its next scheduling step and, in the same step, sends its release id on a
# micro-batch of its own (no rows), so every stage drops the sequence without waiting for another
# request. Checked in /metrics (xcpipe_stage_sequences from the stages' heartbeats goes 1 -> 0 on
# both stages, xcpipe_kv_blocks_used -> 0) and in the debug logs (the coordinator's cancel line,
# then each stage's "released 1 sequence(s) ... 0 rows" line, and how many ms apart).
# usage: api_release.sh XCPIPE WORKER COORD
XCPIPE=$1 WORKER=$2 COORD=$3
source "$(dirname "$0")/cluster_lib.sh"
FIX=$(cd "$(dirname "$0")/../fixtures" && pwd)

"$XCPIPE" model make-tiny --out "$T/m" --layers 2 --vocab 1000 --seed 3 \
  --tokenizer "$FIX/tokenizer/tiny.model" > /dev/null || fail "make-tiny failed"
ep="tcp://127.0.0.1:$(free_port)"
port=$(free_port)
export XC_LOG_LEVEL=debug
start_workers 3 "$ep" w --heartbeat 0.1
"$COORD" --model "$T/m" --endpoint "$ep" --stages 2 --port "$port" --served-model-name tiny \
  --max-context 4096 --max-tokens-limit 3000 --canary-interval 0 2> "$T/coord.log" &
PIDS+=($!)
unset XC_LOG_LEVEL
U="http://127.0.0.1:$port"
end=$((SECONDS + 30))
until [ "$(curl -s -o /dev/null -w '%{http_code}' "$U/ready")" = 200 ]; do
  [ $SECONDS -lt $end ] || fail "/ready not 200 within 30 s"
  sleep 0.1
done

python3 - "$port" << 'EOF' || fail "release check failed"
import http.client, json, re, socket, sys, time
port = int(sys.argv[1])

def metrics():
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/metrics")
    body = c.getresponse().read().decode()
    c.close()
    v = {}
    for line in body.splitlines():
        m = re.match(r'xcpipe_stage_sequences\{replica="0",stage="(\d)"\} (\S+)$', line)
        if m:
            v[int(m[1])] = float(m[2])
        m = re.match(r"xcpipe_kv_blocks_used (\S+)$", line)
        if m:
            v["kv"] = float(m[1])
    return v

def wait(pred, limit, what):
    t0 = time.time()
    while True:
        v = metrics()
        if pred(v):
            return time.time() - t0
        if time.time() - t0 > limit:
            sys.exit(f"{what}: not within {limit} s (metrics {v})")
        time.sleep(0.01)

both = lambda v, n: v.get(0) == n and v.get(1) == n
wait(lambda v: both(v, 0) and v.get("kv") == 0, 5, "idle at the start")
c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
body = {"model": "tiny", "stream": True, "max_tokens": 3000, "ignore_eos": True,
        "temperature": 0, "messages": [{"role": "user", "content": "Tell me a long story"}]}
c.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
r = c.getresponse()
assert r.status == 200, r.status
chunks = 0
while chunks < 5:
    line = r.fp.readline()
    assert line, "the stream ended early"
    chunks += line.startswith(b"data: {")
wait(lambda v: both(v, 1) and v.get("kv", 0) > 0, 3, "every stage holds the sequence")
c.sock.shutdown(socket.SHUT_RDWR)
c.close()
t_kv = wait(lambda v: v.get("kv") == 0, 3, "KV blocks back in the pool")
t_st = wait(lambda v: both(v, 0), 2, "every stage dropped the sequence")
print(f"client closed -> KV blocks free {t_kv * 1000:.0f} ms; -> both stages report 0 live "
      f"sequences {t_st * 1000:.0f} ms later (heartbeats every 100 ms)")
EOF

# the logs: the cancel, then one release-only micro-batch through both stages
cancel=$(grep -m1 "cancelled: KV blocks freed" "$T/coord.log") || fail "no cancel line"
for k in 0 1; do
  # grep the files itself: 'cat | grep -m1' fails under pipefail when grep exits before cat wrote
  # the last file (SIGPIPE), which made this check flaky
  line=$(grep -h -m1 "stage $k: released 1 sequence(s) (micro-batch [0-9]*, 0 rows), 0 live" "$T"/w*.log) \
    || fail "stage $k logged no release-only micro-batch"
  line=${line%%$'\n'*}
  ms=$(python3 -c '
import sys, datetime as d
t = lambda s: d.datetime.strptime(s.split()[0], "%Y-%m-%dT%H:%M:%S.%fZ")
print(round((t(sys.argv[2]) - t(sys.argv[1])).total_seconds() * 1000))' "$cancel" "$line")
  echo "stage $k dropped the sequence $ms ms after the coordinator freed its KV blocks"
  [ "$ms" -le 500 ] || fail "stage $k released $ms ms after the cancel"
done
echo "api_release: ok"
