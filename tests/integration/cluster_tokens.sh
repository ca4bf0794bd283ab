#!/usr/bin/env bash
# The same requests (text-only, two images, greedy and seeded sampling; all 8 at once, so they are
# batched together) give tokens identical to single-process `xcpipe generate` through clusters
# of 1, 2 and 3 decoder stages over ZeroMQ tcp and ipc, with separate worker processes.
XCPIPE=$1 WORKER=$2 COORD=$3
source "$(dirname "$0")/cluster_lib.sh"
make_model
write_requests "$T/req.txt"
reference "$T/req.txt" "$T/want.txt"
[ "$(grep -c ' ok [0-9]' "$T/want.txt")" = 8 ] || fail "reference generation failed: $(cat "$T/want.txt")"

for tr in tcp ipc; do
  for stages in 1 2 3; do
    if [ $tr = tcp ]; then ep="tcp://127.0.0.1:$(free_port)"; else ep="ipc://$T/coord-$stages.sock"; fi
    PIDS=()
    start_workers $((stages + 1)) "$ep" "w$tr$stages-"
    timeout 60 "$COORD" --model "$T/m" --endpoint "$ep" --stages "$stages" --replicas 1 --shutdown-workers \
      --chunk 7 --max-rows 40 --requests "$T/req.txt" --exit-when-done --ready-timeout 20 \
      > "$T/got.txt" 2> "$T/coord.log" || fail "$tr/$stages stages: coordinator failed"
    for p in "${PIDS[@]}"; do
      timeout 10 tail --pid="$p" -f /dev/null || fail "$tr/$stages: a worker did not exit on shutdown"
    done
    diff <(sort "$T/want.txt") <(sort "$T/got.txt") > "$T/diff.txt" \
      || fail "$tr/$stages stages: tokens differ from single-process: $(cat "$T/diff.txt")"
    echo "$tr, $stages stage(s): 8 requests identical"
  done
done
