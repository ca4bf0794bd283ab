#!/usr/bin/env bash
# No orphans: (1) SIGKILL of `xcpipe serve` (the coordinator's process) takes all its child
# workers down within a few seconds (parent-death signal); (2) a worker with --orphan-timeout
# stays up while its coordinator is alive but idle for longer than the timeout (the coordinator
# sends a heartbeat every second), and exits with status 1 once the coordinator has been
# SIGKILLed and stays silent; (3) --parent-pid naming a process that is not (or no longer) the
# parent exits at once.
XCPIPE=$1 WORKER=$2 COORD=$3
source "$(dirname "$0")/cluster_lib.sh"
make_model

# 1. serve: 1 vision + 2 stages as children; SIGKILL serve; the children follow
"$XCPIPE" serve --model "$T/m" --stages 2 --threads 1 --no-http --heartbeat 0.2 \
  2> "$T/serve.log" &
spid=$!
PIDS+=($spid)
end=$((SECONDS + 20))
until [ "$(grep -o "worker w[0-9] ready" "$T/serve.log" | sort -u | wc -l)" = 3 ]; do
  [ $SECONDS -lt $end ] || fail "serve did not start 3 workers"
  sleep 0.1
done
kids=$(pgrep -P "$spid" | tr '\n' ' ')
[ "$(wc -w <<< "$kids")" = 3 ] || fail "serve has children '$kids', want 3 workers"
# (the children are not in PIDS: once gone, their numbers may belong to someone else)
t0=$(date +%s.%N)
{ kill -9 "$spid" && wait "$spid"; } 2> /dev/null || true
forget "$spid"
end=$((SECONDS + 5))
for k in $kids; do
  while kill -0 "$k" 2> /dev/null; do
    [ $SECONDS -lt $end ] || { kill -9 $kids 2> /dev/null; fail "worker $k still runs 5 s after serve was SIGKILLed"; }
    sleep 0.05
  done
done
t1=$(date +%s.%N)
echo "serve SIGKILLed: its 3 workers were gone $(echo "$t1 - $t0" | bc) s later"
rm -rf "/tmp/xcpipe-$spid"

# 2. --orphan-timeout: idle but alive coordinator keeps it; a dead one ends it
ep="tcp://127.0.0.1:$(free_port)"
"$COORD" --model "$T/m" --endpoint "$ep" --stages 1 --no-vision --no-http 2> "$T/coord.log" &
cpid=$!
PIDS+=($cpid)
"$WORKER" --coordinator "$ep" --id lone --threads 1 --heartbeat 0.2 --orphan-timeout 1.5 \
  2> "$T/lone.log" &
wpid=$!
PIDS+=($wpid)
end=$((SECONDS + 20))
until grep -q "worker lone ready" "$T/lone.log"; do
  [ $SECONDS -lt $end ] || fail "the worker did not get ready"
  sleep 0.1
done
sleep 3 # idle for twice the orphan timeout
kill -0 "$wpid" 2> /dev/null || fail "the worker left a live (idle) coordinator"
{ kill -9 "$cpid" && wait "$cpid"; } 2> /dev/null || true
forget "$cpid"
t0=$(date +%s.%N)
timeout 6 tail --pid="$wpid" -f /dev/null || fail "the worker outlived its coordinator by 6 s"
t1=$(date +%s.%N)
wait "$wpid" && fail "the orphaned worker exited 0"
forget "$wpid"
grep -q "no message from the coordinator for .* (--orphan-timeout)" "$T/lone.log" \
  || fail "the worker did not say why it exited"
echo "--orphan-timeout 1.5: kept through 3 s of an idle coordinator, exited $(echo "$t1 - $t0" | bc) s after its SIGKILL"

# 3. --parent-pid of a process that is not the parent
"$WORKER" --coordinator "$ep" --id stray --parent-pid 1 2> "$T/stray.log" &
sp=$!
timeout 5 tail --pid="$sp" -f /dev/null || fail "a worker whose parent is gone kept running"
wait "$sp" && fail "a worker whose parent is gone exited 0"
grep -q "parent 1 is gone" "$T/stray.log" || fail "stray: $(cat "$T/stray.log")"
echo "--parent-pid of a gone parent: exit 1 at once"
