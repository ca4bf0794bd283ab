#!/usr/bin/env bash
# Coordinator restarts keep the workers (docs/cluster.md, "Coordinator restarts"):
# 1. roles: a vision-only worker and two stage-only workers, started in the order that would have
#    given vision to a stage worker before roles existed, get exactly the roles they asked for;
# 2. crash: SIGKILL the coordinator while requests run; a new coordinator on the same endpoint
#    adopts the live workers (their heartbeats make it answer Reregister), becomes ready without
#    any worker restarting or reloading its weights, gives every worker the role it had, and the
#    same requests get the same tokens as before the crash (= single-process `xcpipe generate`);
# 3. upgrade: SIGTERM without --shutdown-workers drains and exits 0, the workers stay up, and the
#    next coordinator adopts them again; with --shutdown-workers the workers exit with it.
XCPIPE=$1 WORKER=$2 COORD=$3
source "$(dirname "$0")/cluster_lib.sh"
make_model
{ echo "t1 ids=1,17,33,99,4,250,12,8,8,3 max=12 greedy=1"
  echo "i2 ids=1,5,9,img,23,44,img,7,8 pixels=$T/p0.f32,$T/p1.f32 max=12 greedy=1"
  echo "s5 ids=1,2,3,4,5 max=10 seed=11"; } > "$T/req.txt"
reference "$T/req.txt" "$T/want.txt"
ep="tcp://127.0.0.1:$(free_port)"

start_worker() { # start_worker ID ROLE: one worker, pid appended to PIDS and recorded in WPID
  "$WORKER" --coordinator "$ep" --id "$1" --role "$2" --threads 1 --heartbeat 0.2 \
    2> "$T/$1.log" &
  PIDS+=($!)
  WPIDS[$1]=$!
}
declare -A WPIDS
# stage workers first, highest name first, then the vision worker: registration order alone
# would put vision on dec-1
start_worker dec-1 stage
start_worker dec-0 stage
sleep 0.3
start_worker vis vision

N=0 # coordinator generation: coordN.log, outN.txt, FIFO inN
start_coord() { # start_coord [extra flags]
  N=$((N + 1))
  rm -f "$T/in$N"
  mkfifo "$T/in$N"
  "$COORD" --model "$T/m" --endpoint "$ep" --stages 2 --dead-timeout 1 "$@" \
    --requests "$T/in$N" > "$T/out$N.txt" 2> "$T/coord$N.log" &
  CPID=$!
  PIDS+=($CPID)
  exec 3> "$T/in$N"
}
wait_line() { # wait_line PATTERN SECONDS: in the current coordinator's answers
  local end=$((SECONDS + $2))
  until grep -q -- "$1" "$T/out$N.txt"; do
    [ $SECONDS -lt $end ] || fail "coordinator $N: no '$1' within $2 s: $(cat "$T/out$N.txt")"
    sleep 0.1
  done
}
roles() { sed -n 's/.*assigned worker \([^:]*\): \([a-z]* replica [0-9]* stage [0-9]*\).*/\1 \2/p' "$T/coord$1.log" | sort -u; }
answers() { grep -E "^(t1|i2|s5) " "$T/out$N.txt" | sort; }
run_requests() {
  cat "$T/req.txt" >&3
  for r in t1 i2 s5; do wait_line "^$r " 20; done
  answers | diff - <(sort "$T/want.txt") || fail "coordinator $N: tokens differ from single-process"
}

start_coord
echo "#wait-ready 20" >&3
wait_line "#ready 1" 25
roles 1 > "$T/roles1.txt"
grep -qx "vis vision replica 0 stage 0" "$T/roles1.txt" || fail "vision role: $(cat "$T/roles1.txt")"
grep -qx "dec-0 decoder replica 0 stage 0" "$T/roles1.txt" || fail "stage 0: $(cat "$T/roles1.txt")"
grep -qx "dec-1 decoder replica 0 stage 1" "$T/roles1.txt" || fail "stage 1: $(cat "$T/roles1.txt")"
echo "roles follow --role and the names, not the registration order"
run_requests
echo "coordinator 1: 3 requests identical to single-process"

# crash in the middle of long generations
for i in 1 2; do echo "long$i ids=1,2,3,$i max=4000 greedy=1" >&3; done
sleep 0.5
grep -q "^long" "$T/out$N.txt" && fail "a long request finished before the kill; make them longer"
{ kill -9 "$CPID" && wait "$CPID"; } 2> /dev/null || true
forget "$CPID"
exec 3>&-
t0=$(date +%s.%N)
start_coord
echo "#wait-ready 20" >&3
wait_line "#ready 1" 25
t1=$(date +%s.%N)
echo "coordinator SIGKILLed mid-run; the new one was ready $(echo "$t1 - $t0" | bc) s after its start"
for w in dec-0 dec-1 vis; do
  kill -0 "${WPIDS[$w]}" 2> /dev/null || fail "worker $w is gone"
  [ "$(grep -c "loaded " "$T/$w.log")" = 1 ] || fail "worker $w reloaded its weights"
  grep -q "coordinator asks to register again" "$T/$w.log" || fail "worker $w was not asked to register"
done
grep -q "heartbeat from unknown worker" "$T/coord2.log" || fail "coordinator 2 did not adopt by heartbeat"
roles 2 | diff - "$T/roles1.txt" || fail "the adopted workers got other roles"
run_requests
echo "coordinator 2 adopted the 3 live workers (same roles, weights kept): 3 requests identical"

# upgrade: SIGTERM without --shutdown-workers leaves the workers up for the next coordinator
kill -TERM "$CPID"
timeout 15 tail --pid="$CPID" -f /dev/null || fail "coordinator 2 did not exit on SIGTERM"
wait "$CPID"; rc=$?
[ $rc = 0 ] || fail "coordinator 2 exit code $rc after SIGTERM"
forget "$CPID"
exec 3>&-
sleep 1
for w in dec-0 dec-1 vis; do
  kill -0 "${WPIDS[$w]}" 2> /dev/null || fail "worker $w exited with the coordinator"
done
start_coord --shutdown-workers
echo "#wait-ready 20" >&3
wait_line "#ready 1" 25
run_requests
echo "SIGTERM without --shutdown-workers: exit 0, workers kept; coordinator 3 adopted them"
kill -TERM "$CPID"
timeout 15 tail --pid="$CPID" -f /dev/null || fail "coordinator 3 did not exit on SIGTERM"
exec 3>&-
for w in dec-0 dec-1 vis; do
  timeout 10 tail --pid="${WPIDS[$w]}" -f /dev/null || fail "worker $w did not exit with --shutdown-workers"
  [ "$(grep -c "loaded " "$T/$w.log")" = 1 ] || fail "worker $w reloaded its weights"
done
echo "SIGTERM with --shutdown-workers: the workers exited; each loaded its weights once in all"
